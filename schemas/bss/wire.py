"""How BSS request and response bodies are written and read.

* Requests are ``extra="forbid"``: a misspelt field would be silently ignored by the API.
* Responses are ``extra="ignore"`` and default every optional field, so a newer API adding
  fields, or a 204 with no body, still parses.
* Decimals the API takes as JSON *numbers* (``face_value``, ``usage_value``) are ``WireDecimal``:
  validated to at most 15 significant digits, which makes ``float`` conversion exact (any such
  decimal is the shortest repr of its nearest double). The serializer re-checks the round trip, so
  the invariant cannot be broken silently.
* ``parse_wire`` reads JSON numbers as ``Decimal``: pydantic's own JSON parser would go through
  ``float`` first.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from schemas.common import check_wire_safe, decimal_text

__all__ = [
    "ApiDateTime",
    "ApiDecimalString",
    "ApiErrorBody",
    "ApiNumber",
    "WireDecimal",
    "WireRequest",
    "WireResponse",
    "parse_wire",
    "wire_json",
]

_M = TypeVar("_M", bound=BaseModel)


class WireRequest(BaseModel):
    """A request body; unknown fields are errors (the API would ignore a typo)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WireResponse(BaseModel):
    """A response body; fields the API adds later are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _exact_float(value: Decimal) -> float:
    result = float(value)
    if not math.isfinite(result) or Decimal(repr(result)) != value:
        raise ValueError(f"{value} cannot be sent as a JSON number without changing it")
    return result


def _number_or_text(value: Decimal) -> float | str:
    # For re-serialising responses (the sandbox): a number where the API sends numbers, unless
    # the value has more digits than a double holds; then the exact string, which we also parse.
    try:
        return _exact_float(value)
    except ValueError:
        return decimal_text(value)


_NUMBER_SCHEMA = WithJsonSchema({"type": "number"})

WireDecimal = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    AfterValidator(check_wire_safe),
    PlainSerializer(_exact_float, return_type=float, when_used="json"),
    _NUMBER_SCHEMA,
]
ApiNumber = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    PlainSerializer(_number_or_text, return_type=float, when_used="json"),
    _NUMBER_SCHEMA,
]
"""An amount the API sends as a JSON number (read exactly through ``parse_wire``)."""
ApiDecimalString = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    PlainSerializer(decimal_text, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string"}),
]
"""An amount the API sends as a string (the renewal inquiry's amounts)."""


def _assume_utc(value: datetime) -> datetime:
    # BSS documents every time as UTC ``yyyy-MM-ddTHH:mm:ssZ``; a value without an offset is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bss_time(value: datetime) -> str:
    return _assume_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


ApiDateTime = Annotated[
    datetime,
    AfterValidator(_assume_utc),
    PlainSerializer(_bss_time, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A BSS time: UTC, written ``yyyy-MM-ddTHH:mm:ssZ`` (sub-seconds dropped)."""


class ApiErrorBody(WireResponse):
    """The error body of BSS (``CBC.*``) and of the API gateway (``APIG.*``, with request_id)."""

    error_code: str | None = None
    error_msg: str | None = None
    request_id: str | None = None


def wire_json(model: BaseModel) -> bytes:
    """Compact JSON of a request body with absent (``None``) fields left out."""
    return model.model_dump_json(exclude_none=True).encode()


def parse_wire(model_type: type[_M], data: bytes) -> _M:
    """Parse an API body, numbers as ``Decimal``; an empty body (HTTP 204) is ``{}``."""
    obj = json.loads(data, parse_float=Decimal) if data.strip() else {}
    return model_type.model_validate(obj)
