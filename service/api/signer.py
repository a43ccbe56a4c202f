"""SDK-HMAC-SHA256 request signing, exactly as Huawei's ``huaweicloudsdkcore`` Signer does it.

One implementation serves both sides: the BSS client signs with it and the sandbox verifies with
it (``reference/bss-api.md`` §4). Invariants that matter on the wire:

* the bytes hashed are the bytes sent (callers pass ``bytes`` bodies, never re-serialise);
* the query string sent is :func:`canonical_query` verbatim (sorted, ``quote(safe='~')``);
* the canonical URI gets a trailing ``/`` but the URL sent does not;
* every header present when signing whose name has no ``_`` is signed, lower-cased and sorted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

__all__ = [
    "ALGORITHM",
    "DATE_FORMAT",
    "EMPTY_BODY_SHA256",
    "Authorization",
    "QueryValue",
    "Signer",
    "canonical_query",
    "canonical_uri",
    "parse_authorization",
    "signature",
]

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()

QueryValue = str | int | bool | Sequence[str | int]


def _scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def canonical_query(params: Iterable[tuple[str, QueryValue | None]]) -> str:
    """The sorted, percent-encoded query string; also what is sent on the wire."""
    pairs: list[tuple[str, str]] = []
    for key, value in params:
        if value is None:
            continue
        if isinstance(value, str | int | bool):
            pairs.append((key, _scalar(value)))
        else:
            pairs.extend((key, _scalar(item)) for item in value)
    pairs.sort()
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)


def canonical_uri(path: str) -> str:
    segments = [quote(unquote(segment), safe="~") for segment in path.split("/")]
    uri = "/".join(segments)
    return uri if uri.endswith("/") else uri + "/"


def _canonical_request(
    method: str,
    path: str,
    *,
    query: str,
    headers: Mapping[str, str],
    signed: Sequence[str],
    body_sha256: str,
) -> str:
    lowered = {name.lower(): value for name, value in headers.items()}
    header_block = "".join(f"{name}:{str(lowered[name]).strip()}\n" for name in signed)
    return "\n".join(
        [method.upper(), canonical_uri(path), query, header_block, ";".join(signed), body_sha256]
    )


def signature(
    secret_key: str,
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    body: bytes,
) -> str:
    """Hex HMAC-SHA256 over the string to sign; ``headers`` must hold every signed header."""
    date = next(v for k, v in headers.items() if k.lower() == "x-sdk-date")
    body_sha256 = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    canonical = _canonical_request(
        method,
        path,
        query=query,
        headers=headers,
        signed=signed_headers,
        body_sha256=body_sha256,
    )
    string_to_sign = "\n".join([ALGORITHM, date, hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(secret_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Authorization:
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization | None:
    """Parse ``SDK-HMAC-SHA256 Access=..., SignedHeaders=..., Signature=...``; None if malformed."""
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            return None
        fields[key] = val
    try:
        return Authorization(
            access_key=fields["Access"],
            signed_headers=tuple(fields["SignedHeaders"].split(";")),
            signature=fields["Signature"],
        )
    except KeyError:
        return None


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs requests with one AK/SK (plus a security token for temporary credentials).

    ``repr`` hides the secret and the token so a signer can never leak through a log line.
    """

    access_key: str
    secret_key: str
    security_token: str | None = None

    def __repr__(self) -> str:
        return f"Signer(access_key={self.access_key!r}, secret_key=***)"

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        *,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """Return ``headers`` plus Host, X-Sdk-Date, X-Security-Token and Authorization."""
        out = dict(headers)
        lowered = {k.lower() for k in out}
        if "x-sdk-date" not in lowered:
            out["X-Sdk-Date"] = (now or datetime.now(UTC)).strftime(DATE_FORMAT)
        if "host" not in lowered:
            out["Host"] = host
        if self.security_token is not None and "x-security-token" not in lowered:
            out["X-Security-Token"] = self.security_token
        signed = sorted(k.lower() for k in out if "_" not in k)
        sig = signature(
            self.secret_key,
            method=method,
            path=path,
            query=query,
            headers=out,
            signed_headers=signed,
            body=body,
        )
        out["Authorization"] = (
            f"{ALGORITHM} Access={self.access_key}, SignedHeaders={';'.join(signed)}, "
            f"Signature={sig}"
        )
        return out
