"""Per-instance signing secrets for development and testing, generated on first use.

Outside production an unset SECRET_KEY or JWT_SECRET_KEY is read from `<instance>/secrets.json`,
which the first process to need it creates with fresh random values (mode 0600). The file is
written to a temporary name and then hard-linked into place: the link fails if the file exists,
so of several processes starting together (gunicorn workers, Celery, the CLI) exactly one
creates it, and every process, the creator included, then reads the one complete file. No
secret is written in the repository, so nobody can forge tokens for someone else's instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from app.settings.fields import ConfigError

FILE_NAME = "secrets.json"
NAMES = ("SECRET_KEY", "JWT_SECRET_KEY")
# 64 random bytes each, URL-safe text (86 characters): well above the 32-character minimum.
_BYTES = 64


def secrets_path(instance_dir: Path) -> Path:
    return Path(instance_dir) / FILE_NAME


def instance_secret(instance_dir: Path, name: str) -> str:
    """The instance's generated value of `name` (SECRET_KEY or JWT_SECRET_KEY)."""
    path = secrets_path(instance_dir)
    if not path.exists():
        _create(path)
    try:
        values = json.loads(path.read_text())
        value = values[name]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path} is unreadable or lacks {name}: delete it to generate new development "
            f"secrets, or set {name}"
        ) from error
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {name} is empty: delete the file or set {name}")
    return value


def _create(path: Path) -> None:
    """Write fresh secrets to `path` unless it exists; safe to race (link, then everyone reads)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        values = {name: secrets.token_urlsafe(_BYTES) for name in NAMES}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                json.dump(values, file)
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: use its file
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create {path} ({error.strerror}): set SECRET_KEY and JWT_SECRET_KEY, or "
            "make the instance directory (INSTANCE_PATH) writable"
        ) from error
