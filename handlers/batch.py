"""Per-item answers of batch calls (renew, renewal quote, coupon issue).

The API reports refused items inside HTTP 200 (``fail_resource_infos``, ``error_details``).
Some items accepted and some refused is a ``partial`` result; every item refused is a failure
of the whole command, carrying the first item's code and every item's reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.errors import ApiRefused
from schemas.bss import FailResourceInfo
from schemas.common import FailedResource

__all__ = ["all_refused", "failed_resources"]


def failed_resources(infos: Sequence[FailResourceInfo]) -> list[FailedResource]:
    """The API's ``fail_resource_infos`` as the event's ``failed_resources``."""
    return [
        FailedResource(resource_id=f.resource_id, code=f.error_code, message=f.error_msg)
        for f in infos
    ]


def all_refused(
    refused: Sequence[tuple[str, str, str]], *, fallback_code: str, nothing_done: str
) -> ApiRefused:
    """The error for a batch whose items were all refused: ``(item_id, code, message)`` each."""
    code = refused[0][1] if refused else fallback_code
    reasons = "; ".join(f"{item}: {item_code} {message}" for item, item_code, message in refused)
    return ApiRefused(code, reasons or nothing_done, http_status=200)
