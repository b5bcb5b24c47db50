# Slim, multi-stage, non-root image for web, worker, beat and the migration job.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
# `monitoring` adds Flower, which the compose file's `flower` service runs from this image.
RUN pip install --no-cache-dir --compile --prefix=/install '.[monitoring]'

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 INSTANCE_PATH=/tmp/instance
RUN useradd --create-home --uid 10001 app
COPY --from=build /install /usr/local
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
