"""What an operator may ask the console to do or show, validated the same from the JSON API
and from the pages' forms (CONTRACT §10)."""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    ValidationError,
    model_validator,
)

from service.ops.console.guard import Refusal

__all__ = [
    "AuditAsk",
    "PauseAsk",
    "QuotaAsk",
    "ReplayAsk",
    "bounded_limit",
    "parse",
]

MAX_REPLAY_IDS = 1000
Name = Annotated[str, Field(min_length=1, max_length=256)]


class _Ask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class QuotaAsk(_Ask):
    """``quota set`` (``rate`` requests/s) or, with ``rate`` null, ``quota reset``: for one
    customer, one egress, or every key of ``api``."""

    api: Name
    rate: StrictFloat | None  # required (a number, not a string or a bool); null resets
    customer: Name | None = None
    egress: Name | None = None

    @model_validator(mode="after")
    def _checked(self) -> QuotaAsk:
        if self.customer is not None and self.egress is not None:
            raise ValueError("give customer or egress, not both")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a positive number of requests per second, or null")
        return self


class PauseAsk(_Ask):
    customer: Name
    api: Name | None = None


class ReplayAsk(_Ask):
    command_ids: list[Name] = Field(min_length=1, max_length=MAX_REPLAY_IDS)
    # As ``bss-relay replay --replay``: a replay unless a dry run is asked for.
    dry_run: StrictBool = False


class AuditAsk(_Ask):
    command_id: Name | None = None
    customer_id: Name | None = None
    limit: int = Field(default=100, ge=1, le=1000)


AskT = TypeVar("AskT", bound=_Ask)


def parse(model: type[AskT], data: Any) -> AskT:
    """``data`` as ``model``, or a 400 that says what is wrong (never echoing the input)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise Refusal(400, f"invalid request: {problems}") from None


def bounded_limit(text: str | None, *, default: int, most: int) -> int:
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= most:
        raise Refusal(400, f"invalid request: limit must be a whole number from 1 to {most}")
    return int(text)
