"""`flask oauth clients list | create | delete`."""

from __future__ import annotations

import re

import pytest

from tests.support.oauth import REDIRECT, bearer, register_app, tokens


@pytest.fixture
def cli(app):
    def run(*args: str):
        return app.test_cli_runner().invoke(args=["oauth", "clients", *args])

    return run


def test_create_prints_the_secret_once_and_list_shows_the_app(cli, account):
    made = cli("create", "Printer", "--owner", account.email, "--redirect-uri", REDIRECT,
               "--scope", "profile", "--confidential")  # fmt: skip
    assert made.exit_code == 0, made.output
    lines = dict(line.split(" ", 1) for line in made.output.splitlines())
    client_id = lines["client_id"]
    assert "shown once" in lines["client_secret"]
    listed = cli("list")
    assert listed.exit_code == 0
    (row,) = [line for line in listed.output.splitlines() if line.startswith(client_id)]
    assert f"confidential  {account.email}  'Printer'  profile  {REDIRECT}" in row
    assert lines["client_secret"].split()[0] not in listed.output


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--owner", "nobody@example.com", "--redirect-uri", REDIRECT, "--scope", "profile"),
         "No user with the email"),
        (("--owner", "{email}", "--redirect-uri", "http://evil.example/cb", "--scope", "profile"),
         "redirect_uris.0"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(cli, account, args, text):
    answer = cli("create", "X", *(a.format(email=account.email) for a in args))
    assert answer.exit_code == 1
    assert text in answer.output
    assert len(answer.output.strip().splitlines()) == 1


def test_delete_ends_the_apps_tokens(cli, client, account, other):
    made = register_app(client, other)
    # Never a leading "-" (click would read the id as an option): 128 bits in hex.
    assert re.fullmatch(r"[0-9a-f]{32}", made["client_id"]), made["client_id"]
    issued = tokens(client, made, account)
    answer = cli("delete", made["client_id"])
    assert answer.exit_code == 0, answer.output
    assert client.get("/api/me", headers=bearer(issued["access_token"])).status_code == 401
    missing = cli("delete", made["client_id"])
    assert missing.exit_code == 1
    assert "no app" in missing.output
