"""`make fuzz`: schemathesis (every phase, every check, fixed seed) against a real gunicorn.

Starts gunicorn on a database of its own (a temporary SQLite file, or a scratch PostgreSQL
database next to DATABASE_URL), creates an admin, and runs `st run` authenticated as that admin,
so the stateful phase can follow every link (create user -> get/patch/delete -> create post ...).
Exits with schemathesis' status: 0 only when no check failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.scratch_db import scratch_database

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def flask(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(base: str, proc: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("gunicorn exited during start-up")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit("gunicorn did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--max-examples", type=int, default=int(os.environ.get("FUZZ_EXAMPLES", 30))
    )
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", 20261121)))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FUZZ_PORT", 0)))
    args, extra = parser.parse_known_args()

    with (
        tempfile.TemporaryDirectory(prefix="fuzz-") as tmp,
        scratch_database(os.environ.get("DATABASE_URL"), Path(tmp), "fuzz") as db,
    ):
        workdir = Path(tmp)
        env = {
            **os.environ,
            "APP_ENV": "testing",
            "DATABASE_URL": db,
            "INSTANCE_PATH": str(workdir),
            "PORT": str(args.port),
            "WEB_CONCURRENCY": "2",
            "LOG_LEVEL": "WARNING",
        }
        flask(env, "db", "upgrade")
        flask(
            env,
            "users",
            "create",
            "fuzz-admin@example.com",
            "--username",
            "fuzz_admin",
            "--password",
            "fuzz-admin-password",
            "--admin",
        )
        port = args.port or free_port()
        env["PORT"] = str(port)
        base = f"http://127.0.0.1:{port}"
        log = (workdir / "gunicorn.log").open("w")
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), "wsgi:app", "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(base, server)
            fuzz_env = {
                **env,
                "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
                "FUZZ_BASE_URL": base,
                "FUZZ_ADMIN_EMAIL": "fuzz-admin@example.com",
                "FUZZ_ADMIN_PASSWORD": "fuzz-admin-password",
            }
            command = [
                str(BIN / "st"),
                "--config-file",
                "tests/fuzz/schemathesis.toml",
                "run",
                f"{base}/api/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--generation-deterministic",
                "--request-timeout",
                "10",
                # One worker: with two threads, CPython 3.11's ast module (used by hypothesis to
                # describe strategies) can raise "AST constructor recursion depth mismatch".
                "--workers",
                "1",
                "--suppress-health-check",
                "all",
                *extra,
            ]
            print("+", " ".join(command), flush=True)
            return subprocess.run(command, cwd=ROOT, env=fuzz_env, check=False).returncode
        finally:
            server.terminate()
            server.wait(timeout=35)
            log.close()


if __name__ == "__main__":
    sys.exit(main())
