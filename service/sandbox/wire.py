"""What the simulated API puts on the wire: exact JSON numbers for money, UTC time strings.

``json`` renders ``Decimal`` only through ``float``, which would turn ``0.1 + 0.2`` style amounts
into ``0.30000000000000004``; the encoder here writes a Decimal's own digits instead. Incoming JSON
is parsed with ``parse_float=Decimal`` so no amount ever passes through a binary float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = ["TIME_FORMAT", "dumps", "loads", "parse_utc", "plain", "utc_text"]

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the BSS APIs' ``yyyy-MM-ddTHH:mm:ssZ``

_encode_str = json.encoder.encode_basestring_ascii


def plain(value: Decimal) -> str:
    """A Decimal's digits without exponent notation (``Decimal('1E+1')`` → ``'10'``)."""
    text = format(value, "f")
    return "0" if text in ("-0", "") else text


def _encode(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_encode_str(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot encode {value} as JSON")
        out.append(plain(value))
    elif isinstance(value, Mapping):
        _encode_object(value, out)
    elif isinstance(value, Sequence):
        _encode_array(value, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode_object(value: Mapping[Any, object], out: list[str]) -> None:
    out.append("{")
    for index, (key, item) in enumerate(value.items()):
        if index:
            out.append(",")
        out.append(_encode_str(str(key)))
        out.append(":")
        _encode(item, out)
    out.append("}")


def _encode_array(value: Sequence[object], out: list[str]) -> None:
    out.append("[")
    for index, item in enumerate(value):
        if index:
            out.append(",")
        _encode(item, out)
    out.append("]")


def dumps(value: object) -> bytes:
    """Compact JSON bytes; Decimals as exact numbers; floats are refused (money never floats)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("ascii")


def loads(raw: bytes) -> Any:
    """Parse JSON with every non-integer number as a Decimal; raises ``ValueError`` if invalid."""
    return json.loads(raw, parse_float=Decimal)


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_utc(text: str) -> datetime:
    """Strict ``yyyy-MM-ddTHH:mm:ssZ``; raises ``ValueError`` for any other form."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
