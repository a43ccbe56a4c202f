"""Field types and shapes shared by commands, events and results.

Two invariants live here because every money-carrying message depends on them:

* Money is a ``Decimal`` end to end. It is written to JSON as a *string* with the Decimal's own
  digits (``"10.50"`` stays ``"10.50"``) so no consumer is tempted to read it as a binary float.
* Timestamps are timezone-aware and normalised to UTC; an instant without an offset is ambiguous
  (a ``deadline`` read in the wrong zone would run a command hours late), so it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "COMMAND_ID_PATTERN",
    "DECIMAL_PATTERN",
    "MAX_PERIOD_NUM",
    "WIRE_SIGNIFICANT_DIGITS",
    "CommandId",
    "CustomerId",
    "FailedResource",
    "Identifier",
    "Money",
    "PeriodType",
    "PlainDecimalText",
    "ResourceId",
    "ResourceIds",
    "StrictModel",
    "UtcDateTime",
    "check_period",
    "check_wire_safe",
    "decimal_text",
    "trimmed_digits",
    "unique_items",
]

COMMAND_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# What ``decimal_text`` writes: optional sign, digits, optional fraction; never an exponent.
DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
# Any decimal with at most this many significant digits survives a trip through an IEEE-754
# double unchanged (DBL_DIG == 15): ``Decimal(repr(float(d))) == d``. Values the BSS API wants as
# JSON *numbers* are held to it at validation time, so converting them with ``float`` is exact.
WIRE_SIGNIFICANT_DIGITS = 15
_DECIMAL_TEXT = re.compile(DECIMAL_PATTERN)
_WIRE_MAX_EXPONENT = 300  # well inside a double's range (~1e308), so float() never overflows

_T = TypeVar("_T", bound=Hashable)


class StrictModel(BaseModel):
    """Base of every message model: unknown fields are errors and instances are immutable.

    ``extra="forbid"`` is typo protection on money commands: ``"face_vaule": "10"`` must be
    rejected, not silently dropped. Whitespace is kept as sent so ids are never altered.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=False,
        use_attribute_docstrings=True,
    )


# --- identifiers -------------------------------------------------------------------------------

CommandId = Annotated[str, StringConstraints(pattern=COMMAND_ID_PATTERN)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64)]
"""An API id (customer, resource, quota, project): non-empty, at most 64 characters."""
CustomerId = Identifier
ResourceId = Identifier


def unique_items(values: list[_T]) -> list[_T]:
    """Reject repeated list items, naming the first repeat so the producer can find it."""
    seen: set[_T] = set()
    for value in values:
        if value in seen:
            raise PydanticCustomError(
                "unique_items", "items must be unique; '{item}' is listed twice", {"item": value}
            )
        seen.add(value)
    return values


ResourceIds = Annotated[
    list[ResourceId], Field(min_length=1, max_length=10), AfterValidator(unique_items)
]
"""1-10 distinct primary resource ids: the API's per-call maximum for renewal and its quote."""


# --- money -------------------------------------------------------------------------------------


def _plain_decimal_text(value: object) -> object:
    """A decimal sent as a *string* is written as the published pattern says (plain digits,
    optional minus and fraction). pydantic's own Decimal parsing would also take ``"1e3"``,
    ``" 10"``, ``"+10"`` or ``".5"``, which the AsyncAPI document forbids: the model decides
    what the document says, so the two cannot drift apart. Strings that are no finite number
    at all pass on, for pydantic's more precise message; numeric rules (sign, places) follow."""
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
        try:
            finite = Decimal(value).is_finite()
        except ArithmeticError:
            finite = False
        if finite:
            raise PydanticCustomError(
                "decimal_string",
                "a decimal string must be plain digits ({pattern}), got '{value}'",
                {"pattern": DECIMAL_PATTERN, "value": value[:40]},
            )
    return value


PlainDecimalText = BeforeValidator(_plain_decimal_text)


def decimal_text(value: Decimal) -> str:
    """The Decimal's own digits in plain notation (``10.50`` -> ``"10.50"``, never ``1E+2``)."""
    return format(value, "f")


Money = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    PlainDecimalText,
    PlainSerializer(decimal_text, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DECIMAL_PATTERN,
            "description": 'A decimal amount as a string, e.g. "10.50" (never a binary float).',
            "examples": ["10.50"],
        }
    ),
]


def trimmed_digits(value: Decimal) -> tuple[int, int]:
    """(significant digits, exponent) of a finite ``value`` without its trailing zeros.

    Works on the digit tuple instead of ``Decimal.normalize``, which rounds to the context's
    precision and could hide exactly the excess digits we are checking for.
    """
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    count = len(digits)
    while count > 1 and digits[count - 1] == 0:
        count -= 1
        exponent += 1
    return count, exponent


def check_wire_safe(value: Decimal) -> Decimal:
    """Refuse decimals that a JSON number (an IEEE double on the API side) cannot carry exactly."""
    if trimmed_digits(value)[0] > WIRE_SIGNIFICANT_DIGITS:
        raise PydanticCustomError(
            "decimal_too_precise",
            "at most {max} significant digits are allowed, got {value}",
            {"max": WIRE_SIGNIFICANT_DIGITS, "value": decimal_text(value)},
        )
    if abs(value.adjusted()) > _WIRE_MAX_EXPONENT:
        raise PydanticCustomError(
            "decimal_out_of_range",
            "the magnitude of {value} is outside what a JSON number can carry",
            {"value": str(value)},
        )
    return value


# --- time --------------------------------------------------------------------------------------


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


UtcDateTime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 timestamp with an offset; normalised to UTC.",
            "examples": ["2026-11-24T08:00:00Z"],
        }
    ),
]


# --- subscription periods ----------------------------------------------------------------------

PeriodType = Literal["month", "year"]
MAX_PERIOD_NUM: Mapping[str, int] = MappingProxyType({"month": 11, "year": 3})
"""The API's renewal ranges (``reference/bss-api.md`` §9a): months 1-11, years 1-3."""


def check_period(period_type: str, period_num: int) -> None:
    """Refuse a renewal period the API would refuse (``CBC.99000092``), with the allowed range."""
    maximum = MAX_PERIOD_NUM[period_type]
    if not 1 <= period_num <= maximum:
        raise PydanticCustomError(
            "period_out_of_range",
            "period_num for period_type '{period_type}' must be between 1 and {max}, got {num}",
            {"period_type": period_type, "max": maximum, "num": period_num},
        )


# --- shared result shapes ----------------------------------------------------------------------


class FailedResource(StrictModel):
    """One resource the API refused inside an otherwise accepted batch call."""

    resource_id: str
    code: str
    """The API's error code, e.g. ``CBC.99003100``; passed through unchanged."""
    message: str
