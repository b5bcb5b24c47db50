# Slim, multi-stage, non-root image for web, worker, beat and the migration job.
FROM python:3.11-slim AS build
# The same uv as the Makefile's UV_VERSION; it stays in this stage.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir uv==${UV_VERSION}
# Exactly uv.lock's runtime pins into /venv, byte-compiled here (the runtime sets
# PYTHONDONTWRITEBYTECODE); a non-editable install, so /venv holds the project too.
ENV UV_PROJECT_ENVIRONMENT=/venv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# The dependencies first, in a layer of their own that only a change to the lock rebuilds.
# `monitoring` adds Flower, which the compose file's `flower` service runs from this image.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --extra monitoring --no-install-project
COPY README.md ./
COPY app ./app
COPY worker ./worker
RUN uv sync --locked --no-dev --extra monitoring --no-editable

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 INSTANCE_PATH=/tmp/instance \
    PATH=/venv/bin:$PATH
RUN useradd --create-home --uid 10001 app
# Same base image, same path: the venv's interpreter links and script shebangs stay valid.
COPY --from=build /venv /venv
WORKDIR /srv
COPY --chown=app:app wsgi.py gunicorn.conf.py ./
COPY --chown=app:app app ./app
COPY --chown=app:app worker ./worker
COPY --chown=app:app migrations ./migrations
# Byte-compiled once here: PYTHONDONTWRITEBYTECODE stops every process compiling it again.
RUN python -m compileall -q app worker migrations wsgi.py
# The Celery metrics volume takes this mount point's ownership when first created.
RUN mkdir -p /srv/metrics/celery && chown -R app:app /srv/metrics
USER app
EXPOSE 8000
CMD ["gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"]
