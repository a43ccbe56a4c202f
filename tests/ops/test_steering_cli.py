"""``bss-relay quota``, ``pause``, ``resume``, ``why`` and ``audit``'s operator lines, on both
stores (CONTRACT §9): what each verb writes, what the others then read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.cli import main
from service.store import open_store
from service.store.steering import BucketReport, Publication, WaitingEntry
from tests.contract import QUOTA_SHOW_FIELDS
from tests.store.conftest import POSTGRES_URL, drop_schema, postgres_schema

API = "list_rate_on_period_detail"
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    schema = postgres_schema()
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        asyncio.run(drop_schema(schema))


@pytest.fixture
def cli(store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("STORE_URL", store_url)
    monkeypatch.delenv("RELAY_RATE_LIMITS", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_limit_changes_are_audited_with_their_actor(cli: Cli) -> None:
    assert cli("quota", "set", API, "3", "--customer", "c-1", "--as", "alice")[0] == 0
    assert cli("quota", "set", API, "7.5", "--as", "bob")[0] == 0
    assert cli("quota", "set", "renewal_resources", "2", "--egress", "nat-a", "--as", "bob")[0] == 0
    assert cli("quota", "reset", API, "--customer", "c-1", "--as", "carol")[0] == 0

    code, out, _ = cli("audit", "--json")
    assert code == 0
    assert [{k: v for k, v in line.items() if k != "at"} for line in lines(out)] == [
        {
            "actor": "alice",
            "action": "quota_set",
            "api": API,
            "customer": "c-1",
            "rate": 3.0,
            "customer_id": "c-1",
        },
        {"actor": "bob", "action": "quota_set", "api": API, "rate": 7.5},
        {
            "actor": "bob",
            "action": "quota_set",
            "api": "renewal_resources",
            "egress": "nat-a",
            "rate": 2.0,
        },
        {
            "actor": "carol",
            "action": "quota_reset",
            "api": API,
            "customer": "c-1",
            "rate": None,
            "customer_id": "c-1",
        },
    ]
    code, out, _ = cli("audit", "--json", "--action", "quota_reset")
    assert [line["actor"] for line in lines(out)] == ["carol"]


def test_pause_and_resume_show_in_quota_and_in_the_audit(cli: Cli) -> None:
    assert cli("pause", "--customer", "c-9", "--as", "dave")[0] == 0
    code, out, _ = cli("quota", "show", "--json")
    assert code == 0
    assert lines(out) == [
        {
            "api": "*",
            "kind": "customer",
            "key": "c-9",
            "limit": None,
            "rate": None,
            "waiting": 0,
            "oldest_wait_s": None,
            "throttled_5m": 0,
            "paused": True,
        }
    ]
    assert cli("resume", "--customer", "c-9", "--as", "erin")[0] == 0
    assert lines(cli("quota", "show", "--json")[1]) == []
    actions = [
        (line["actor"], line["action"], line["customer"])
        for line in lines(cli("audit", "--json")[1])
    ]
    assert actions == [("dave", "pause", "c-9"), ("erin", "resume", "c-9")]


def test_an_unknown_operation_or_a_bad_rate_is_refused(cli: Cli) -> None:
    code, _, err = cli("quota", "set", "no_such_api", "3")
    assert code == 2
    assert "unknown operation 'no_such_api'" in err
    code, _, err = cli("quota", "set", API, "-1")
    assert code == 2
    assert "positive" in err
    assert lines(cli("audit", "--json", "--action", "quota_set")[1]) == []


def test_quota_show_adds_up_what_replicas_publish(cli: Cli, store_url: str) -> None:
    async def publish() -> None:
        now = datetime.now(UTC)
        async with open_store(store_url) as store:
            for owner, since, throttled in (
                ("r-1", now - timedelta(seconds=30), 2),
                ("r-2", now - timedelta(seconds=5), 1),
            ):
                await store.steering.publish(
                    Publication(
                        owner=owner,
                        egress="default",
                        started_at=now,
                        renew_until=now + timedelta(seconds=30),
                        waiting=[
                            WaitingEntry(
                                f"{owner}-cmd",
                                "waiting",
                                API,
                                "customer",
                                "c-1",
                                "normal",
                                since,
                                now,
                                now + timedelta(seconds=30),
                            )
                        ],
                        reports=[BucketReport(API, "customer", "c-1", 10.0, 5.0, throttled, now)],
                    )
                )

    asyncio.run(publish())
    assert cli("quota", "set", API, "4", "--customer", "c-1")[0] == 0
    [row] = lines(cli("quota", "show", "--json")[1])
    assert {
        k: row[k] for k in ("api", "kind", "key", "limit", "rate", "waiting", "throttled_5m")
    } == {
        "api": API,
        "kind": "customer",
        "key": "c-1",
        "limit": 4.0,
        "rate": 4.0,
        "waiting": 2,
        "throttled_5m": 3,
    }
    assert 29 <= float(row["oldest_wait_s"]) <= 60  # type: ignore[arg-type]

    code, out, _ = cli("quota", "show")
    assert code == 0
    assert out.splitlines()[0].split() == list(QUOTA_SHOW_FIELDS)


def test_quota_show_counts_a_command_two_replicas_publish_once(cli: Cli, store_url: str) -> None:
    """One replica parked it and has not learnt yet that another pulled it and holds it: the
    two rows are one waiting command."""

    async def publish() -> None:
        now = datetime.now(UTC)
        async with open_store(store_url) as store:
            for owner in ("parker", "holder"):
                entry = WaitingEntry(
                    "cmd-1", "waiting", API, "customer", "c-1", "normal", now, now,
                    now + timedelta(seconds=30),
                )  # fmt: skip
                await store.steering.publish(
                    Publication(owner, "default", now, now + timedelta(seconds=30), waiting=[entry])
                )

    asyncio.run(publish())
    [row] = lines(cli("quota", "show", "--json")[1])
    assert row["waiting"] == 1


def test_why_says_where_a_command_is(cli: Cli, store_url: str) -> None:
    async def prepare() -> None:
        now = datetime.now(UTC)
        async with open_store(store_url) as store:
            lease = timedelta(minutes=5)
            await store.claim("done", "renew", owner="r-1", lease=lease)
            event = {"event_id": "ev-1", "outcome": "succeeded"}
            await store.finish("done", owner="r-1", event=json.dumps(event).encode())
            await store.claim("busy", "renew", owner="host:42:abc", lease=lease)
            await store.steering.dead_lettered(
                "bad", type="renew", customer_id="c-1", reason="RELAY.SCHEMA", message="x"
            )
            await store.steering.publish(
                Publication(
                    owner="r-2",
                    egress="default",
                    started_at=now,
                    renew_until=now + timedelta(seconds=30),
                    waiting=[
                        WaitingEntry(
                            "first",
                            "waiting",
                            API,
                            "egress",
                            "default",
                            "normal",
                            now - timedelta(seconds=9),
                            now + timedelta(seconds=4),
                            now + timedelta(seconds=30),
                        ),
                        WaitingEntry(
                            "second",
                            "waiting",
                            API,
                            "egress",
                            "default",
                            "normal",
                            now - timedelta(seconds=3),
                            now + timedelta(seconds=8),
                            now + timedelta(seconds=30),
                        ),
                        WaitingEntry(
                            "held",
                            "paused",
                            API,
                            "customer",
                            "c-2",
                            "normal",
                            now,
                            None,
                            now + timedelta(seconds=30),
                        ),
                        WaitingEntry(
                            "later",
                            "delayed",
                            None,
                            None,
                            None,
                            None,
                            now,
                            now + timedelta(seconds=60),
                            now + timedelta(seconds=90),
                        ),
                    ],
                )
            )

    asyncio.run(prepare())

    def why(command_id: str) -> dict[str, object]:
        code, out, _ = cli("why", command_id, "--json")
        assert code == 0
        return json.loads(out)  # type: ignore[no-any-return]

    assert why("nobody") == {"command_id": "nobody", "state": "not_seen"}
    assert {k: why("done")[k] for k in ("state", "outcome", "event_id")} == {
        "state": "finished",
        "outcome": "succeeded",
        "event_id": "ev-1",
    }
    assert {k: why("busy")[k] for k in ("state", "replica")} == {
        "state": "running",
        "replica": "host:42:abc",
    }
    assert {k: why("bad")[k] for k in ("state", "reason")} == {
        "state": "dead_lettered",
        "reason": "RELAY.SCHEMA",
    }
    second = why("second")
    assert {k: second[k] for k in ("state", "api", "kind", "key", "position", "replica")} == {
        "state": "waiting",
        "api": API,
        "kind": "egress",
        "key": "default",
        "position": 2,
        "replica": "r-2",
    }
    assert datetime.fromisoformat(str(second["expected_start_at"])).tzinfo is not None
    assert why("first")["position"] == 1
    assert {k: why("held")[k] for k in ("state", "api", "customer")} == {
        "state": "paused",
        "api": API,
        "customer": "c-2",
    }
    later = why("later")
    assert later["state"] == "delayed"
    assert datetime.fromisoformat(str(later["retry_at"])) > datetime.now(UTC)

    _, out, _ = cli("why", "second")
    assert out.startswith("second: waiting")
    assert "position=2" in out


def test_quota_show_gives_the_limit_the_replicas_run_with(cli: Cli, store_url: str) -> None:
    """The replicas' configured limit (their RELAY_RATE_LIMITS: 2/s here) is the one in force,
    not the table of the process that asks (10/s published); a live limit wins over both."""

    async def publish() -> None:
        now = datetime.now(UTC)
        async with open_store(store_url) as store:
            await store.steering.publish(
                Publication(
                    owner="r-1",
                    egress="default",
                    started_at=now,
                    renew_until=now + timedelta(seconds=30),
                    waiting=[],
                    reports=[BucketReport(API, "customer", "c-1", 2.0, 2.0, 0, now)],
                )
            )

    asyncio.run(publish())
    [row] = lines(cli("quota", "show", "--json")[1])
    assert (row["limit"], row["rate"]) == (2.0, 2.0)
    assert cli("quota", "set", API, "1", "--customer", "c-1")[0] == 0
    [row] = lines(cli("quota", "show", "--json")[1])
    assert (row["limit"], row["rate"]) == (1.0, 1.0)
