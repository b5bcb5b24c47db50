"""Kept for existing imports: the settings live in `app.settings`."""

from app.settings import INSTANCE_DIR, ConfigError, Settings, settings

__all__ = ["INSTANCE_DIR", "ConfigError", "Settings", "settings"]
