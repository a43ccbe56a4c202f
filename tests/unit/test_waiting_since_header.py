"""When a parked command began to wait survives AMQP header encoding to the millisecond.

pamqp encodes a Python float header as a 32-bit float: an epoch-seconds instant would arrive
rounded to a multiple of 128 s, and ``why`` would place parked commands in the wrong order.
"""

from __future__ import annotations

from typing import Any

from pamqp import decode, encode

from service.broker.headers import H, waiting_since

SINCE = 1_795_000_000.123


def roundtrip(headers: dict[str, Any]) -> dict[str, Any]:
    _, decoded = decode.field_table(encode.field_table(headers))
    return decoded


def test_the_instant_survives_the_wire_to_the_millisecond() -> None:
    since = waiting_since(roundtrip({H.WAITING_SINCE: f"{SINCE:.3f}"}))
    assert since is not None
    assert abs(since - SINCE) < 0.001


def test_a_float_header_would_not() -> None:
    assert abs(roundtrip({"t": SINCE})["t"] - SINCE) > 1  # why it travels as text


def test_missing_or_garbled_is_none() -> None:
    assert waiting_since({}) is None
    assert waiting_since({H.WAITING_SINCE: "soon"}) is None
    assert waiting_since({H.WAITING_SINCE: "nan"}) is None
