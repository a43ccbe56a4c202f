"""Typed, strict reads of a request body or query string; any misfit is ``CBC.0100`` (HTTP 400).

Stricter than Huawei where the reference is silent (``docs/sandbox.md`` lists these choices):

* unknown keys are refused — a misspelt key (``resourceIds`` from the retired camelCase API)
  would otherwise be silently ignored;
* JSON types are exact: an ``int`` field does not accept ``"2"`` or ``true``; money fields take
  JSON numbers (what the SDK sends), not strings;
* ``null`` means absent (the SDK drops ``None`` fields; a hand-written client may send them);
* list APIs cap ``limit`` at 100 (the reference's advice where no maximum is documented).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from multidict import MultiMapping

from service.sandbox.errors import bad_request
from service.sandbox.wire import parse_utc

__all__ = ["MAX_LIMIT", "Fields", "query_fields"]

MAX_LIMIT = 100


class Fields:
    def __init__(
        self, raw: object, allowed: Iterable[str], *, where: str = "body", textual: bool = False
    ) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise bad_request(f"the {where} must be a JSON object")
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise bad_request(f"unknown {where} field(s): {', '.join(map(str, unknown))}")
        self._raw: Mapping[str, Any] = raw
        self._textual = textual

    def has(self, name: str) -> bool:
        return self._raw.get(name) is not None

    def _get(self, name: str, required: bool) -> Any:
        value = self._raw.get(name)
        if value is None and required:
            raise bad_request(f"{name} is required")
        return value

    def text(
        self,
        name: str,
        *,
        required: bool = False,
        max_len: int = 64,
        choices: Iterable[str] | None = None,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str) or (required and not value) or len(value) > max_len:
            raise bad_request(f"{name} must be a string of at most {max_len} characters")
        if choices is not None and value not in set(choices):
            raise bad_request(f"{name} must be one of {', '.join(choices)}")
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        lo: int | None = None,
        hi: int | None = None,
        default: int | None = None,
    ) -> int | None:
        value = self._get(name, required)
        if value is None:
            return default
        number = self._as_int(name, value)
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise bad_request(f"{name} must be between {lo} and {hi}")
        return number

    def _as_int(self, name: str, value: object) -> int:
        if self._textual and isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"{name} must be an integer")
        return value

    def texts(
        self,
        name: str,
        *,
        required: bool = False,
        min_items: int = 0,
        max_items: int = 100,
        max_len: int = 64,
    ) -> list[str] | None:
        value = self._get(name, required)
        if value is None:
            return None
        if self._textual and isinstance(value, str):
            value = [value]
        ok = isinstance(value, list) and all(
            isinstance(v, str) and 0 < len(v) <= max_len for v in value
        )
        if not ok or not min_items <= len(value) <= max_items:
            raise bad_request(f"{name} must be a list of {min_items}-{max_items} strings")
        if len(set(value)) != len(value):
            raise bad_request(f"{name} contains duplicates")
        return list(value)

    def integers(
        self, name: str, *, choices: Iterable[int], max_items: int = 10
    ) -> list[int] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if self._textual and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or len(value) > max_items:
            raise bad_request(f"{name} must be a list of at most {max_items} integers")
        numbers = [self._as_int(name, v) for v in value]
        allowed = set(choices)
        if any(n not in allowed for n in numbers):
            raise bad_request(f"{name} values must be among {sorted(allowed)}")
        return numbers

    def decimal(self, name: str, *, required: bool = False) -> Decimal | None:
        value = self._get(name, required)
        if value is None:
            return None
        if self._textual and isinstance(value, str):
            try:
                value = Decimal(value)
            except InvalidOperation:
                raise bad_request(f"{name} must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise bad_request(f"{name} must be a JSON number")
        return Decimal(value)

    def flag(self, name: str) -> bool | None:
        value = self._get(name, False)
        if value is None:
            return None
        if self._textual and value in ("true", "false"):
            return bool(value == "true")
        if not isinstance(value, bool):
            raise bad_request(f"{name} must be true or false")
        return value

    def time(self, name: str) -> datetime | None:
        value = self._get(name, False)
        if value is None:
            return None
        try:
            return parse_utc(value) if isinstance(value, str) else _raise_time(name)
        except ValueError:
            raise bad_request(f"{name} must be a UTC time like 2026-05-06T08:05:01Z") from None

    def objects(self, name: str, *, max_items: int) -> list[Any]:
        value = self._get(name, True)
        if not isinstance(value, list) or not 1 <= len(value) <= max_items:
            raise bad_request(f"{name} must be a list of 1-{max_items} objects")
        return value

    def object(self, name: str) -> Any:
        return self._get(name, True)

    def page(self, default_limit: int = 10) -> tuple[int, int]:
        offset = self.integer("offset", lo=0, default=0)
        limit = self.integer("limit", lo=1, hi=MAX_LIMIT, default=default_limit)
        assert offset is not None
        assert limit is not None
        return offset, limit

    def window(self, begin: str, end: str) -> tuple[datetime | None, datetime | None]:
        start, stop = self.time(begin), self.time(end)
        if start is not None and stop is not None and start > stop:
            raise bad_request(f"{begin} must not be after {end}")
        return start, stop


def _raise_time(name: str) -> datetime:
    raise ValueError(name)


def query_fields(
    query: MultiMapping[str], allowed: Iterable[str], multi: Iterable[str] = ()
) -> Fields:
    """Fields over a query string: repeated keys only where ``multi`` allows lists."""
    lists = set(multi)
    flat: dict[str, object] = {}
    for key in query:
        if key in flat:
            continue
        values = query.getall(key)
        if key in lists:
            flat[key] = list(values)
        elif len(values) > 1:
            raise bad_request(f"query parameter {key} is repeated")
        else:
            flat[key] = values[0]
    return Fields(flat, allowed, where="query", textual=True)
