"""``bss-relay replay`` on the command line: output, exit codes, argument errors."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from service.ops.deployment import AuditRow
from service.ops.replay import register_cli
from service.ops.steering import open_deployment
from service.settings import Settings
from tests.replay.conftest import Broker, command


def run_cli(argv: list[str]) -> int:
    """The verb as ``bss-relay`` mounts it. ``service.cli`` is not used: it also imports verbs
    other modules own, which may not exist yet."""
    parser = argparse.ArgumentParser(prog="bss-relay")
    register_cli(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["replay", *argv])
    code: int = args.func(args)
    return code


async def cli(argv: list[str]) -> int:
    # asyncio.run needs a thread without a running loop; the tests' loop runs in this one.
    return await asyncio.to_thread(run_cli, argv)


async def audited(store_url: str) -> list[AuditRow]:
    """The operators' actions the deployment's audit holds (its command rows left out)."""
    async with open_deployment(Settings(store_url=store_url)) as deployment:
        return [r for r in await deployment.audit() if r.action == "replay"]


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


async def test_list_json(broker: Broker, amqp_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await broker.dead_letter(command("a", partner="p-1"))
    await broker.dead_letter(command("b", partner="p-2"), reason="RELAY.SCHEMA")

    code = await cli(["--amqp-url", amqp_url, "--json", "--partner", "p-2"])

    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(r["command_id"], r["action"], r["reason"]) for r in rows] == [
        ("b", "listed", "RELAY.SCHEMA")
    ]
    assert rows[0]["routing_key"] == "command.renew"
    assert "scanned 2, matched 1" in err
    assert len(await broker.dlq(2)) == 2


async def test_list_from_a_node_list_skips_a_dead_node(
    broker: Broker, amqp_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await broker.dead_letter(command("a"))
    dead = "amqp://guest:dead-secret@127.0.0.1:5999/x"

    code = await cli(["--amqp-url", f"{dead},{amqp_url}", "--json"])

    out, err = capsys.readouterr()
    assert code == 0
    assert [json.loads(line)["command_id"] for line in out.splitlines()] == ["a"]
    assert "dead-secret" not in out + err


async def test_list_text(broker: Broker, amqp_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await broker.dead_letter(command("a", customer="c-7"), attempts=4)

    assert await cli(["--amqp-url", amqp_url]) == 0

    header, line = capsys.readouterr().out.splitlines()
    assert header.split("\t")[0] == "command_id"
    assert line.split("\t") == [
        "a",
        "renew",
        "p-1",
        "c-7",
        "RELAY.RETRIES_EXHAUSTED",
        "4",
        "2026-01-15T09:30:00+00:00",
        "command.renew",
    ]


async def test_dry_run_exit_code_says_some_would_be_rejected(
    broker: Broker, amqp_url: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await broker.dead_letter(command("good"))
    await broker.dead_letter(b"[]", message_id="array", reason="RELAY.INVALID_JSON")

    code = await cli(["--amqp-url", amqp_url, "--store-url", store_url, "--replay", "--dry-run"])

    out = capsys.readouterr().out
    assert code == 1
    assert "good\tcommand.renew\twould replay" in out
    assert "would be rejected again: RELAY.INVALID_JSON body must be a JSON object" in out
    assert await broker.tapped() == []
    assert len(await broker.dlq(2)) == 2


async def test_replay_one_command(
    broker: Broker, amqp_url: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a", "b", "c"):
        await broker.dead_letter(command(name))
    argv = ["--amqp-url", amqp_url, "--store-url", store_url, "--replay", "--command-id", "b"]

    code = await cli([*argv, "--json", "--as", "alice"])

    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (code, row["command_id"], row["action"]) == (0, "b", "replayed")
    assert [s.message_id for s in await broker.tapped()] == ["b"]
    assert [s.message_id for s in await broker.dlq(2)] == ["a", "c"]
    [entry] = await audited(store_url)
    assert (entry.actor, entry.action, entry.command_id, entry.customer_id) == (
        "alice",
        "replay",
        "b",
        "c-1",
    )
    assert entry.detail["result"] == "replayed"
    assert entry.detail["via"] == "cli"


async def test_a_finished_command_is_only_reannounced(
    broker: Broker, amqp_url: str, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store decides: a dead letter whose command finished is re-announced by the service
    (its stored event), never carried out again; the verb says so, dry run and replay alike."""
    await finish_in_store(store_url, "done")
    await broker.dead_letter(command("done"), reason="RELAY.ID_CONFLICT")
    await broker.dead_letter(command("open"))
    base = ["--amqp-url", amqp_url, "--store-url", store_url, "--json"]

    assert await cli([*base, "--replay", "--dry-run"]) == 0
    dry = {
        r["command_id"]: r["action"] for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert dry == {"done": "would reannounce", "open": "would replay"}
    assert await audited(store_url) == []  # a dry run changes nothing and is not an action

    assert await cli([*base, "--replay", "--as", "bob"]) == 0
    done = {
        r["command_id"]: r["action"] for r in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert done == {"done": "reannounced", "open": "replayed"}
    assert {(e.actor, e.command_id, e.detail["result"]) for e in await audited(store_url)} == {
        ("bob", "done", "reannounced"),
        ("bob", "open", "replayed"),
    }
    assert sorted(s.message_id or "" for s in await broker.tapped()) == ["done", "open"]


async def finish_in_store(store_url: str, command_id: str) -> None:
    from datetime import timedelta

    from service.store import open_store

    async with open_store(store_url) as store:
        await store.claim(command_id, "renew", owner="test", lease=timedelta(seconds=5))
        await store.finish(command_id, owner="test", event=b'{"outcome": "succeeded"}')
        await store.mark_published(command_id)


@pytest.mark.parametrize(
    "argv",
    [
        ["--since", "yesterday"],
        ["--until", "2026-01-15T09:30:00"],  # no offset
        ["--limit", "0"],
        ["--type", "reboot"],
        ["--list", "--replay"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli(argv)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--list", "--dry-run"],
        ["--since", "2026-01-16T00:00:00Z", "--until", "2026-01-15T00:00:00Z"],
        ["--amqp-url", "amqp://guest:guest@127.0.0.1:1/"],
    ],
)
async def test_unusable_requests_exit_2(argv: list[str]) -> None:
    assert await cli(argv) == 2


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "bss-relay replay --replay --dry-run" in out


def test_bss_relay_mounts_the_verb(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    assert "examples:" in capsys.readouterr().out
