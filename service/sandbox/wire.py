"""What the simulated API puts on the wire: exact JSON numbers for money, UTC time strings.

``json`` renders ``Decimal`` only through ``float``, which would turn ``0.1 + 0.2`` style amounts
into ``0.30000000000000004``; the encoder here writes a Decimal's own digits instead. Incoming JSON
is parsed with ``parse_float=Decimal`` so no amount ever passes through a binary float.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
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


def _object(value: dict[Any, Any]) -> str:
    return "{" + ",".join([f"{_encode_str(str(k))}:{_encode(v)}" for k, v in value.items()]) + "}"


def _array(value: list[Any] | tuple[Any, ...]) -> str:
    return "[" + ",".join([_encode(item) for item in value]) + "]"


def _number(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"cannot encode {value} as JSON")
    return plain(value)


# Exact-type dispatch: this runs for every node of every answer, so no isinstance chain.
_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: _encode_str,
    dict: _object,
    int: int.__repr__,
    type(None): lambda _: "null",
    list: _array,
    tuple: _array,
    bool: lambda value: "true" if value else "false",
    Decimal: _number,
}


def _encode(value: Any) -> str:
    encoder = _BY_TYPE.get(type(value))
    if encoder is not None:
        return encoder(value)
    if isinstance(value, Mapping):
        return _object(dict(value))
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return _array(list(value))
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: object) -> bytes:
    """Compact JSON bytes; Decimals as exact numbers; floats are refused (money never floats)."""
    return _encode(value).encode("ascii")


def loads(raw: bytes) -> Any:
    """Parse JSON with every non-integer number as a Decimal; raises ``ValueError`` if invalid."""
    return json.loads(raw, parse_float=Decimal)


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_utc(text: str) -> datetime:
    """Strict ``yyyy-MM-ddTHH:mm:ssZ``; raises ``ValueError`` for any other form."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
