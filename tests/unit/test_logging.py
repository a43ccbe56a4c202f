"""One JSON stream with the command's context bound; secret-looking values never rendered."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.contextvars import bound_contextvars

from service.telemetry.logging import configure_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logging configured into a string; the process's configuration put back afterwards (the
    next test in this worker, whichever it is, logs as before: at INFO, into pytest's capture)."""
    root = logging.getLogger()
    saved = structlog.get_config(), root.level, root.handlers[:]
    out = io.StringIO()
    configure_logging("DEBUG", stream=out)
    yield out
    config, level, handlers = saved
    structlog.configure(**config)
    root.setLevel(level)
    root.handlers[:] = handlers


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_is_bound_and_output_is_json(stream: io.StringIO) -> None:
    log = structlog.get_logger("t")
    with bound_contextvars(command_id="c-1", type="renew", partner_id="p", customer_id="x"):
        log.info("command_finished", outcome="succeeded")
    [line] = lines(stream)
    assert line["event"] == "command_finished"
    assert (line["command_id"], line["type"], line["partner_id"], line["customer_id"]) == (
        "c-1",
        "renew",
        "p",
        "x",
    )
    assert line["level"] == "info"
    assert str(line["timestamp"]).endswith("Z")


def test_stdlib_loggers_go_through_the_same_renderer(stream: io.StringIO) -> None:
    logging.getLogger("aio_pika").warning("reconnecting %s", "now")
    [line] = lines(stream)
    assert line["event"] == "reconnecting now"
    assert line["logger"] == "aio_pika"


def test_secret_looking_keys_are_redacted_even_nested(stream: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info(
        "oops",
        secret_key="SK-very-secret",
        headers={"Authorization": "SDK-HMAC-SHA256 Signature=abc", "X-Security-Token": "tok"},
        credential={"securitytoken": "tok2", "access": "AK"},
    )
    text = stream.getvalue()
    for secret in ("SK-very-secret", "Signature=abc", "tok2", '"tok"'):
        assert secret not in text
    [line] = lines(stream)
    assert line["credential"] == {"securitytoken": "***", "access": "AK"}
