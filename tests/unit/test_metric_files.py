"""Relays on one host share a metrics directory: one starting removes the sample files of
processes that are gone, never a live sibling's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.core.metrics import remove_dead_process_files


def test_only_the_files_of_exited_processes_are_removed(tmp_path: Path) -> None:
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(exited.stdout)
    files = {
        "mine": tmp_path / f"counter_{os.getpid()}.db",
        "parent": tmp_path / f"counter_{os.getppid()}.db",
        "dead": tmp_path / f"counter_{dead}.db",
        "dead_gauge": tmp_path / f"gauge_livesum_{dead}.db",
        "not_ours": tmp_path / "notes.db",
    }
    for path in files.values():
        path.write_bytes(b"")
    assert remove_dead_process_files(str(tmp_path)) == 2
    assert {name for name, path in files.items() if path.exists()} == {"mine", "parent", "not_ours"}
