"""`make run`: every process of the Procfile under honcho, each given a warm stop.

    python -m app.ops.supervisor [Procfile]

Output is honcho's: every line prefixed with the time and the process name (`web.1`,
`worker.1`, `beat.1`), interleaved as it comes. Ctrl-C (SIGINT) or SIGTERM stops everything.

`honcho start` (2.0) falls short of a graceful stop in two ways, so this runs honcho's own
`Manager` with two changes, made through its internals (`_procmgr`, `KILL_WAIT`, and
`_processes` for the exit status), so honcho is pinned below 2.1 in pyproject.toml:

1. honcho signals each process *group*: gunicorn's workers and Celery's prefork children get
   SIGTERM directly, and the prefork children (which reset SIGTERM to its default) die
   mid-task. Here SIGTERM goes to each Procfile process itself (the gunicorn master, the Celery
   main process: every Procfile line `exec`s its program), which stops its children its own
   way: gunicorn finishes in-flight requests, Celery finishes running tasks (warm shutdown).
2. honcho SIGKILLs whatever still runs 5 s after the first process exits (`KILL_WAIT`, not
   configurable: honcho issue #189), which cuts a warm Celery shutdown short. Here that wait is
   RUN_STOP_TIMEOUT seconds (default 60, above gunicorn's 30 s graceful timeout); only a
   process group still alive after it is killed.

Exit status: 0 after Ctrl-C or SIGTERM when every process stopped with 0; otherwise honcho's
(130 after Ctrl-C, 143 after SIGTERM, else the first status a process exited with). Each
process's own status is printed as `<name> stopped (rc=N)`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

import honcho.manager
from honcho.compat import ProcessManager
from honcho.environ import expand_processes, parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer

DEFAULT_PORT = 8000
DEFAULT_STOP_TIMEOUT = 60.0
STOPPED_BY_SIGNAL = {128 + signal.SIGINT, 128 + signal.SIGTERM}  # honcho's status after each


class SignalEachProcess(ProcessManager):
    """Stop requests go to the Procfile process itself; a forced kill still takes its group."""

    def terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it has exited already
            os.kill(pid, signal.SIGTERM)


def build_manager(procfile: Path, port: int, stop_timeout: float) -> Manager:
    honcho.manager.KILL_WAIT = stop_timeout
    manager = Manager(Printer(sys.stdout))
    manager._procmgr = SignalEachProcess()
    processes = parse_procfile(procfile.read_text()).processes
    # Output goes through a pipe: unbuffered, so lines interleave as they are written.
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for process in expand_processes(processes, port=port):
        manager.add_process(process.name, process.cmd, env={**base_env, **process.env})
    return manager


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("procfile", nargs="?", default="Procfile", type=Path)
    args = parser.parse_args(argv)
    port = int(os.environ.get("PORT") or DEFAULT_PORT)
    stop_timeout = float(os.environ.get("RUN_STOP_TIMEOUT") or DEFAULT_STOP_TIMEOUT)
    manager = build_manager(args.procfile, port, stop_timeout)
    manager.loop()
    if manager.returncode in STOPPED_BY_SIGNAL:
        # A stop we were asked for, and every process exited 0: that is success, not 130/143.
        statuses = [p.get("returncode") for p in manager._processes.values()]
        if all(status == 0 for status in statuses):
            return 0
    return int(manager.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
