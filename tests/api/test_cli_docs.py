"""Every `flask` command the app registers is in the operator CLI list of `docs/operations.md`
(the other documentation checks, which need no app, are in tests/unit/test_docs.py)."""

from __future__ import annotations

import re

import click
from flask import Flask

from tests.support.docs import OPERATIONS, section


def _commands(group: click.Group, prefix: str) -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found += _commands(command, path)
        elif getattr(command.callback, "__module__", "").startswith("app."):
            found.append(path)  # ours; Flask-Migrate's and flask-smorest's have their own docs
    return found


def test_every_cli_command_is_in_the_operator_cli_list(app: Flask) -> None:
    commands = _commands(app.cli, "flask")
    assert "flask users create" in commands
    cli_text = section(OPERATIONS, "Operator CLI")
    missing = []
    for command in commands:
        *group, leaf = command.split()
        # Listed either whole ("flask cache warm") or as alternatives ("flask cache warm | stats").
        pattern = re.escape(" ".join(group)) + r"[^\n]*\b" + re.escape(leaf) + r"\b"
        if not re.search(pattern, cli_text):
            missing.append(command)
    assert not missing, f"commands missing from docs/operations.md's Operator CLI: {missing}"
