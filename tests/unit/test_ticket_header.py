"""The parking ticket survives AMQP header encoding to the millisecond.

pamqp encodes a Python float header as a 32-bit float: an epoch-seconds ticket would arrive
rounded to a multiple of 128 s and parked commands would come back far too early or too late.
"""

from __future__ import annotations

from typing import Any

from pamqp import decode, encode

from service.pacing.parking import ticket_from_headers, ticket_header

TICKET = 1_795_000_000.123


def roundtrip(headers: dict[str, Any]) -> dict[str, Any]:
    _, decoded = decode.field_table(encode.field_table(headers))
    return decoded


def test_ticket_survives_the_wire_to_the_millisecond() -> None:
    headers = roundtrip(ticket_header(TICKET))
    ticket = ticket_from_headers(headers)
    assert ticket is not None
    assert abs(ticket - TICKET) < 0.001


def test_a_float_header_would_not() -> None:
    assert abs(roundtrip({"t": TICKET})["t"] - TICKET) > 1  # why the ticket travels as text


def test_missing_or_garbled_ticket_is_none() -> None:
    assert ticket_from_headers({}) is None
    assert ticket_from_headers({"x-relay-ticket": "soon"}) is None


def test_the_issuing_interval_travels_with_the_ticket() -> None:
    from service.pacing.parking import Ticket

    headers = roundtrip(ticket_header(Ticket(TICKET, 0.4)))
    ticket = ticket_from_headers(headers)
    assert ticket is not None
    assert abs(ticket - TICKET) < 0.001
    assert ticket.interval == 0.4
    plain = ticket_from_headers(roundtrip(ticket_header(TICKET)))  # an older header
    assert plain is not None
    assert plain.interval is None
