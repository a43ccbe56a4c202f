"""Refusals the sandbox answers, in the three shapes the real services use.

ApiError                       one refusal: HTTP status, code, message, and its shape
├── shape "bss"                ``{"error_code": "CBC.xxxx", "error_msg": ...}`` (business errors)
├── shape "gateway"            the same plus ``"request_id"`` (APIGW/APIG: auth, throttling, 404)
└── shape "iam"                ``{"error_code": "IAM.xxxx", "error_msg": ...}`` (IAM v3.0 APIs)

Per-item failures inside an HTTP 200 (``fail_resource_infos``, ``error_details``) are not
exceptions: the business modules build those lists themselves.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "PARAMETER_ERROR",
    "ApiError",
    "bad_request",
    "business",
    "denied",
    "gateway",
    "iam_error",
]

Shape = Literal["bss", "gateway", "iam"]

PARAMETER_ERROR = "CBC.0100"
ACCESS_DENIED = "CBC.0151"


class ApiError(Exception):
    """A request-level refusal; the gateway turns it into an HTTP error response."""

    def __init__(self, status: int, code: str, message: str, *, shape: Shape = "bss") -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.shape = shape

    def body(self, request_id: str) -> dict[str, str]:
        out = {"error_code": self.code, "error_msg": self.message}
        if self.shape == "gateway":
            out["request_id"] = request_id
        return out


def bad_request(message: str) -> ApiError:
    """``CBC.0100`` parameter error (HTTP 400)."""
    return ApiError(400, PARAMETER_ERROR, f"Invalid parameter: {message}")


def business(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, code, message)


def denied(message: str) -> ApiError:
    """``CBC.0151`` access denied (HTTP 403): wrong caller type or no relation to the customer."""
    return ApiError(403, ACCESS_DENIED, f"Access denied. {message}")


def gateway(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, code, message, shape="gateway")


def iam_error(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, code, message, shape="iam")
