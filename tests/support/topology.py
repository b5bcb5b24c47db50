"""Many processes on shared servers (issue #19, contract §10): gunicorn instances, Celery workers
and beats, each a real process started as production starts it, all on one PostgreSQL, Redis and
broker. Used by the scale-out drill (tests/system/test_scale_out.py) and its bench
(bench/scale_out.py)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.support.live import Http, free_port
from tests.support.paths import ROOT

RABBITMQCTL = shutil.which("rabbitmqctl")
# "Task auth.resync_blocklist[6f1c…] received": Celery's own line, one per delivery to a worker.
_RECEIVED = re.compile(r'"timestamp": "([^"]+)".*?Task ([\w.]+)\[([0-9a-f-]+)\] received')
# "Scheduler: Sending due task resync-blocklist (auth.resync_blocklist)": beat's, one per send.
_SENT = re.compile(r'"timestamp": "([^"]+)".*?Sending due task [\w.-]+ \(([\w.]+)\)')


@contextlib.contextmanager
def rabbitmq_vhost(amqp_url: str, label: str) -> Iterator[str]:
    """A vhost of this drill's own on the RabbitMQ that `amqp_url` names (rabbitmqctl, as root:
    the drill's queues never meet another run's), deleted afterwards."""
    assert RABBITMQCTL, "rabbitmqctl is needed to make a vhost"
    vhost = f"postboard_{label}_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(amqp_url)
    user = parts.username or "guest"
    subprocess.run([RABBITMQCTL, "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            [RABBITMQCTL, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield urlunsplit((parts.scheme, parts.netloc, "/" + vhost, "", ""))
    finally:
        subprocess.run([RABBITMQCTL, "-q", "delete_vhost", vhost], capture_output=True)


@dataclass
class Process:
    """One process of the topology, in its own process group, its output in a file."""

    role: str
    proc: subprocess.Popen
    log_path: Path
    port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def cpu_seconds(self) -> float:
        """CPU time of the process and its live children (gunicorn's and prefork's workers)."""
        return sum(_cpu_seconds(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])


@dataclass
class Topology:
    """Start web, worker and beat processes on the servers `env` names; stop them all at exit."""

    directory: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)

    def _spawn(self, role: str, args: list[str], port: int | None = None, **env: str) -> Process:
        index = sum(1 for p in self.processes if p.role == role)
        log_path = self.directory / f"{role}-{index}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(role, proc, log_path, port)
        self.processes.append(process)
        return process

    def migrate(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def web(self, workers: int = 2) -> Process:
        port = free_port()
        gunicorn = [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"]
        metrics = self.directory / f"metrics-web-{port}"
        return self._spawn(
            "web",
            gunicorn,
            port,
            PORT=str(port),
            WEB_CONCURRENCY=str(workers),
            PROMETHEUS_MULTIPROC_DIR=str(metrics),
        )

    def worker(self, concurrency: int = 2) -> Process:
        name = f"drill-{uuid.uuid4().hex[:6]}@%h"
        args = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-n", name]
        args += ["--loglevel=INFO", f"--concurrency={concurrency}"]
        return self._spawn("worker", args)

    def beat(self) -> Process:
        index = sum(1 for p in self.processes if p.role == "beat")
        schedule = self.directory / f"beat-{index}.schedule"
        args = [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO"]
        return self._spawn("beat", [*args, "--schedule", str(schedule)])

    def wait_ready(self, timeout: float = 90) -> None:
        """Every web answers /health and every worker has said it is ready."""
        deadline = time.monotonic() + timeout
        pending = list(self.processes)
        while pending and time.monotonic() < deadline:
            for process in list(pending):
                assert process.alive(), f"{process.role} exited:\n{process.log()[-3000:]}"
                if _ready(process):
                    pending.remove(process)
            time.sleep(0.2)
        assert not pending, "not ready: " + ", ".join(p.role for p in pending)

    def of(self, role: str) -> list[Process]:
        return [p for p in self.processes if p.role == role]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def received(self) -> dict[str, list[tuple[float, str]]]:
        """Every task delivery the workers logged: name -> [(unix time, task id)], sorted."""
        runs: dict[str, list[tuple[float, str]]] = {}
        for process in self.of("worker"):
            for stamp, name, task_id in _RECEIVED.findall(process.log()):
                runs.setdefault(name, []).append((_unix(stamp), task_id))
        return {name: sorted(found) for name, found in runs.items()}

    def sent(self) -> dict[str, list[float]]:
        """Every periodic send the beats logged: task name -> [unix time], sorted."""
        sends: dict[str, list[float]] = {}
        for process in self.of("beat"):
            for stamp, name in _SENT.findall(process.log()):
                sends.setdefault(name, []).append(_unix(stamp))
        return {name: sorted(times) for name, times in sends.items()}


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _ready(process: Process) -> bool:
    if process.role == "web":
        assert process.port is not None
        with contextlib.suppress(OSError):
            return Http(f"http://127.0.0.1:{process.port}").call("GET", "/health")[0] == 200
        return False
    if process.role == "worker":
        return " ready." in process.log()
    return "beat: Starting..." in process.log()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                for child in text.split():
                    found += [int(child), *_children(int(child))]
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the shared servers on this machine (PostgreSQL, Redis,
    RabbitMQ), by name: sampled before and after a drill to give their load."""
    names = {"postgres": "postgresql", "redis-server": "redis", "beam.smp": "rabbitmq"}
    totals = dict.fromkeys(names.values(), 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if comm in names:
                totals[names[comm]] += _cpu_seconds(int(entry))
    return totals
