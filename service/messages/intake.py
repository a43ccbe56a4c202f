"""Reading a command message: bytes in, a validated command or a ``Rejection`` out. Never raises.

Whatever can be read from an unusable message (its ``command_id``, ``type``, partner and
customer) is kept on the rejection so the ``rejected`` event is as useful as possible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.commands import COMMAND_ADAPTER, Command, CommandType, load_json

__all__ = ["Rejection", "read_command", "valid_command_id"]

_COMMAND_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TYPES = frozenset(t.value for t in CommandType)
MAX_ERRORS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Rejection:
    code: str
    message: str
    command_id: str | None = None
    type: str = "invalid"
    partner_id: str | None = None
    customer_id: str | None = None


def valid_command_id(value: str) -> bool:
    return _COMMAND_ID.match(value) is not None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _identify(raw: dict[str, Any], code: str, message: str) -> Rejection:
    command_id = _text(raw.get("command_id"))
    kind = _text(raw.get("type"))
    payload = raw.get("payload")
    customer = _text(payload.get("customer_id")) if isinstance(payload, dict) else None
    return Rejection(
        code=code,
        message=message,
        command_id=command_id if command_id and valid_command_id(command_id) else None,
        type=kind if kind in _TYPES else "invalid",
        partner_id=_text(raw.get("partner_id")),
        customer_id=customer,
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:MAX_ERRORS_SHOWN]:
        where = ".".join(str(p) for p in error["loc"]) or "(body)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def _decode(body: bytes, max_bytes: int) -> dict[str, Any] | Rejection:
    if len(body) > max_bytes:
        return Rejection("RELAY.TOO_LARGE", f"body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        raw = load_json(body)  # numbers as Decimal: 10.50 stays 10.50, never a float
    except UnicodeDecodeError as exc:
        return Rejection("RELAY.INVALID_JSON", f"body is not UTF-8: {exc.reason} at {exc.start}")
    except ValueError as exc:
        return Rejection("RELAY.INVALID_JSON", f"body is not JSON: {exc}")
    except (RecursionError, MemoryError) as exc:  # hostile input: [[[[...]]]] 10,000 deep
        return Rejection("RELAY.INVALID_JSON", f"body is nested too deeply to read ({exc!r})")
    if not isinstance(raw, dict):
        return Rejection("RELAY.INVALID_JSON", "body must be a JSON object")
    return raw


def read_command(body: bytes, *, max_bytes: int) -> Command | Rejection:
    raw = _decode(body, max_bytes)
    if isinstance(raw, Rejection):
        return raw
    if raw.get("type") not in _TYPES:
        wanted = ", ".join(sorted(_TYPES))
        message = f"type {raw.get('type')!r} is not one of {wanted}"
        return _identify(raw, "RELAY.UNKNOWN_TYPE", message)
    try:
        return COMMAND_ADAPTER.validate_python(raw)  # decoded once, above
    except ValidationError as exc:
        return _identify(raw, "RELAY.SCHEMA", _describe(exc))
    except (RecursionError, MemoryError) as exc:
        return _identify(raw, "RELAY.SCHEMA", f"payload is nested too deeply ({exc!r})")
