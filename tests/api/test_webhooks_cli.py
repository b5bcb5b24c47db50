"""`flask webhooks list | deliveries | retry | disable` (operators), and their one-line refusals."""

from __future__ import annotations

import pytest

from app import create_app
from tests.factories import UNKNOWN_ID
from tests.support.backends import test_config
from tests.support.webhooks import add_delivery, new_webhook


@pytest.fixture
def cli(app):
    def run(*args: str):
        return app.test_cli_runner().invoke(args=["webhooks", *args])

    return run


def one_line_error(result, text: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 or lines[-1].startswith("Error:"), result.output
    assert text in result.output
    assert "Traceback" not in result.output


def test_list_shows_every_live_webhook_with_its_owner(client, account, other, cli):
    mine = new_webhook(client, account, ["post.created", "post.deleted"])
    theirs = new_webhook(client, other)
    gone = new_webhook(client, other)
    client.delete(f"/api/webhooks/{gone}", headers=other.headers)
    result = cli("list")
    assert result.exit_code == 0, result.output
    assert f"{mine}  active  {account.email}  post.created,post.deleted  https://" in result.output
    assert f"{theirs}  active  {other.email}  *  https://" in result.output
    assert gone not in result.output
    assert "whsec_" not in result.output
    only = cli("list", "--owner", other.email.upper())
    assert theirs in only.output
    assert mine not in only.output


def test_list_of_an_unknown_owner_is_one_line(cli):
    one_line_error(cli("list", "--owner", "nobody@example.com"), "No user with the email")


def test_deliveries_lists_status_and_attempts(app, client, account, cli):
    hook = new_webhook(client, account)
    dead = add_delivery(app, hook, status="dead", codes=(500, None))
    done = add_delivery(app, hook, status="delivered", codes=(200,))
    result = cli("deliveries", hook)
    assert result.exit_code == 0, result.output
    assert f"{dead}  dead  post.created  attempts 2" in result.output
    assert f"{done}  delivered" in result.output
    assert "#1" in result.output
    assert "timeout" in result.output
    only_dead = cli("deliveries", hook, "--status", "dead", "--limit", "5")
    assert dead in only_dead.output
    assert done not in only_dead.output


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("deliveries", "not-a-uuid"), "not a valid UUID"),
        (("deliveries", UNKNOWN_ID), "No such webhook."),
        (("deliveries", UNKNOWN_ID, "--status", "lost"), "Invalid value for '--status'"),
        (("retry", UNKNOWN_ID, "--all-dead"), "No such webhook."),
        (("retry", UNKNOWN_ID), "give either DELIVERY_ID or --all-dead"),
        (("retry", UNKNOWN_ID, UNKNOWN_ID, "--all-dead"), "give either DELIVERY_ID or --all-dead"),
        (("disable", "x"), "not a valid UUID"),
        (("disable", UNKNOWN_ID), "No such webhook."),
    ],
)
def test_bad_input_is_one_line(cli, args, text):
    one_line_error(cli(*args), text)


def test_retry_one_then_all_dead(app, client, account, cli):
    hook = new_webhook(client, account)
    first = add_delivery(app, hook, status="dead")
    second = add_delivery(app, hook, status="dead")
    pending = add_delivery(app, hook, status="pending", codes=())
    result = cli("retry", hook, first)
    assert result.exit_code == 0, result.output
    assert "retrying 1 deliveries" in result.output
    assert "drain not published (tasks off" in result.output  # TASKS_ENABLED is off in tests
    one_line_error(cli("retry", hook, pending), "Only a dead delivery can be retried")
    one_line_error(cli("retry", hook, UNKNOWN_ID), "No such delivery.")
    everything = cli("retry", hook, "--all-dead")
    assert everything.exit_code == 0, everything.output
    assert "retrying 1 deliveries" in everything.output
    listed = client.get(f"/api/webhooks/{hook}/deliveries", headers=account.headers).json["data"]
    assert {d["id"]: d["status"] for d in listed} == {
        first: "pending",
        second: "pending",
        pending: "pending",
    }
    assert "no dead deliveries" in cli("retry", hook, "--all-dead").output


def test_disable_stops_a_webhook_with_a_reason_its_owner_sees(client, account, cli):
    hook = new_webhook(client, account)
    result = cli("disable", hook, "--reason", "target answers 410")
    assert result.exit_code == 0, result.output
    assert f"disabled webhook {hook}: target answers 410" in result.output
    data = client.get(f"/api/webhooks/{hook}", headers=account.headers).json["data"]
    assert (data["active"], data["disabled_reason"]) == (False, "target answers 410")
    assert "disabled" in cli("list").output


def test_the_cli_app_runs_them_too(database_uri, client, account):
    """The light CLI app (role "cli") loads the commands when they run."""
    hook = new_webhook(client, account)
    cli_app = create_app(test_config(database_uri), role="cli")
    result = cli_app.test_cli_runner().invoke(args=["webhooks", "list"])
    assert result.exit_code == 0, result.output
    assert hook in result.output
