"""Celery tasks: thin wrappers that load by id and call the same services as the HTTP layer."""
