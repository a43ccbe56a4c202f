"""The one settings object, read from the environment (and optionally an env file) at the edge.

Only this module reads the environment (the ``OTEL_*`` variables of tracing included).
``Settings`` keeps one flat field per variable, so every name stays as CONTRACT §5 and the
README's "Configuration" spell it; the runtime hands each of its steps one frozen *group* of
them, by concern:

=================  =============================================================================
``broker``         ``BrokerSettings``: AMQP_URL, the service's queues (prefix, type)
``store``          ``StoreSettings``: STORE_URL, the lease (also the renewal locks' idle bound),
                   retention
``pacing``         ``PacingSettings``: rate limits, guard, egress, hold window
``api``            ``ApiSettings``: endpoints, partner accounts, HTTP pool and timeouts,
                   429 retries, credentials cache
``messages``       ``MessageSettings``: prefetch, body size, retries, deferral, settling,
                   stall, drain, the policy file
``operations``     ``OperationsSettings``: log level, metrics and health endpoint, tracing
=================  =============================================================================

``bss-relay console`` reads its own section (``RELAY_CONSOLE_*``) from the flat fields.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.broker.connection import parse_urls
from service.store import DEFAULT_STORE_URL
from service.telemetry.tracing import TracingConfig

__all__ = [
    "ApiSettings",
    "BrokerSettings",
    "MessageSettings",
    "OperationsSettings",
    "PacingSettings",
    "PartnerAccount",
    "Settings",
    "StoreSettings",
    "load_partners_file",
    "read_secret_file",
]


def read_secret_file(path: Path) -> SecretStr:
    """A secret kept in a file (a Kubernetes or Docker secret): its contents without the
    trailing newline. Errors name the file, never its contents."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read secret file {path}: {why}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError(f"secret file {path} is empty")
    return SecretStr(secret)


class PartnerAccount(BaseModel):
    """One partner account: its domain id (the ParentUid of its own calls), AK/SK, agency name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partner_id: str = Field(min_length=1)
    access_key: str = Field(min_length=1)
    secret_key: SecretStr
    # The agency customers granted this partner; needed for customer calls, not for coupons.
    agency_name: str | None = None


def _secret_from_file(row: object, base: Path) -> object:
    """A partner entry's ``secret_key_file`` (relative paths from the partners file's folder)
    replaced by the secret it holds."""
    if not isinstance(row, dict) or "secret_key_file" not in row:
        return row
    row = dict(row)
    reference = Path(str(row.pop("secret_key_file")))
    if "secret_key" in row:
        raise ValueError(f"partner {row.get('partner_id')!r}: secret_key or secret_key_file")
    row["secret_key"] = read_secret_file(reference if reference.is_absolute() else base / reference)
    return row


def load_partners_file(path: Path) -> dict[str, PartnerAccount]:
    """Read ``BSS_PARTNERS_FILE`` (JSON or YAML): ``{"partners": [{partner_id, ...}, ...]}``.

    An entry may give ``secret_key_file`` (a path, relative to this file's folder) instead of
    ``secret_key``."""
    text = path.read_text(encoding="utf-8")
    data: Any = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    rows = data.get("partners") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty list under 'partners'")
    accounts = [PartnerAccount.model_validate(_secret_from_file(row, path.parent)) for row in rows]
    by_id = {a.partner_id: a for a in accounts}
    if len(by_id) != len(accounts):
        raise ValueError(f"{path}: partner_id values must be unique")
    return by_id


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    url: str  # one node, or several nodes of a cluster separated by commas
    queue_prefix: str
    queue_type: Literal["classic", "quorum"]


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str
    lease: timedelta  # a claim's lease; a silent renewal-lock session ends after as long
    retention: timedelta


@dataclass(frozen=True, slots=True)
class PacingSettings:
    rate_limits: Mapping[str, float]  # overrides of the published table
    egress: str
    guard_s: float
    guard_max_s: float
    hold_s: float


@dataclass(frozen=True, slots=True)
class ApiSettings:
    bss_endpoint: str
    iam_endpoint: str
    source_address: str | None
    http_connections: int
    http_timeout_s: float
    connect_timeout_s: float
    throttle_retries: int
    credential_duration_s: int
    credential_refresh_margin_s: int
    credential_cache_size: int
    partners_file: Path | None = None
    partner: PartnerAccount | None = None  # the inline BSS_PARTNER_ID/... account

    def partners(self) -> dict[str, PartnerAccount]:
        """Every configured partner account, by partner id (the file, then the inline one)."""
        accounts: dict[str, PartnerAccount] = {}
        if self.partners_file is not None:
            accounts.update(load_partners_file(self.partners_file))
        if self.partner is not None:
            accounts[self.partner.partner_id] = self.partner
        return accounts


@dataclass(frozen=True, slots=True)
class MessageSettings:
    prefetch: int  # unacknowledged messages the consumer takes at a time
    max_body_bytes: int
    max_attempts: int
    retry_base_s: float
    retry_max_s: float
    store_retry_s: float
    deferred_after_s: float
    settle_retry_s: float
    stall_s: float
    shutdown_grace_s: float
    policy_file: Path | None = None


@dataclass(frozen=True, slots=True)
class OperationsSettings:
    log_level: str
    metrics_host: str
    metrics_port: int | None = None
    tracing: TracingConfig = field(default_factory=TracingConfig)


class Settings(BaseSettings):
    """Configuration from the environment. Contract names (CONTRACT.md §5) keep their spelling;
    tuning knobs are prefixed ``RELAY_``; tracing reads the standard ``OTEL_*`` names. Fields are
    listed by the group (property) that hands them on."""

    # hide_input_in_errors: a model-level error would otherwise print the input (every setting,
    # secret keys included) in its message, which serve writes to stderr.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    # --- broker -------------------------------------------------------------------------------
    # One broker node, or several nodes of a cluster separated by commas
    # (service/broker/connection.py).
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    relay_queue_prefix: str = "bss-relay"
    # quorum: the work, delay and dead-letter queues are quorum queues (a clustered broker).
    relay_queue_type: Literal["classic", "quorum"] = "classic"

    # --- store --------------------------------------------------------------------------------
    store_url: str = DEFAULT_STORE_URL
    # A crashed replica's commands stay claimed this long before another takes them over;
    # leases are renewed in one statement per process every third of it.
    relay_lease_s: float = Field(default=10.0, gt=0, le=3600)
    relay_retention_days: float = Field(default=30.0, gt=0)

    # --- pacing -------------------------------------------------------------------------------
    # Per-operation rate limits in requests/second, overriding reference/bss-api.md §7.
    relay_rate_limits: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    # Spacing safety: each bucket's slots are this much further apart per second of quota, so
    # clock jitter between us and the gateway never puts limit+1 requests in one second. It
    # starts at RELAY_RATE_GUARD_MS and widens (up to the maximum) only when the API throttles.
    relay_rate_guard_ms: float = Field(default=2.0, ge=0, le=500)
    relay_rate_guard_max_ms: float = Field(default=50.0, ge=0, le=500)
    # Names this replica's egress: replicas with the same name share its (API, egress) buckets.
    # Default: the source address when one is set, else "default".
    relay_egress: str = ""
    # Commands whose API turn is further away than this are parked on the broker instead of
    # being held in memory (and in the prefetch window) ahead of other customers' commands.
    relay_hold_s: float = Field(default=2.0, gt=0, le=60)

    # --- API ----------------------------------------------------------------------------------
    bss_endpoint: str = "https://bss.myhuaweicloud.com"
    iam_endpoint: str = "https://iam.myhuaweicloud.com"
    bss_partner_id: str | None = None
    bss_access_key: str | None = None
    bss_secret_key: SecretStr | None = None
    # The secret key in a file instead (Kubernetes/Docker secrets); trailing newline dropped.
    bss_secret_key_file: Path | None = None
    bss_agency_name: str | None = None
    bss_partners_file: Path | None = None
    # The local address API connections leave from (one per replica or pod on a host with
    # several addresses); unset: the operating system picks.
    relay_source_address: str | None = None
    relay_http_timeout_s: float = Field(default=30.0, gt=0)
    relay_connect_timeout_s: float = Field(default=5.0, gt=0)
    relay_http_connections: int = Field(default=64, ge=1)
    relay_throttle_retries: int = Field(default=5, ge=0)
    relay_credential_duration_s: int = Field(default=3600, ge=900, le=86400)
    relay_credential_refresh_margin_s: int = Field(default=300, ge=0)
    relay_credential_cache_size: int = Field(default=10_000, ge=1)

    # --- message path -------------------------------------------------------------------------
    relay_prefetch: int = Field(default=64, ge=1, le=10_000)
    relay_max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    relay_max_attempts: int = Field(default=8, ge=1)
    relay_retry_base_s: float = Field(default=1.0, gt=0)
    relay_retry_max_s: float = Field(default=300.0, gt=0)
    # How long a command waits before it is tried again while the store is unreachable.
    relay_store_retry_s: float = Field(default=2.0, gt=0, le=60)
    # A command expected to wait longer than this for quota gets one `<type>.deferred` event.
    relay_deferred_after_s: float = Field(default=10.0, gt=0)
    # How long a message's settlement keeps trying a broker that is reconnecting before the
    # message counts as stuck (the stall detector then frees it with a new channel).
    relay_settle_retry_s: float = Field(default=30.0, gt=0)
    # Messages stuck unsettled this long: /healthz answers 503 and the consumer re-establishes
    # its channel, so the broker redelivers them.
    relay_stall_s: float = Field(default=60.0, gt=0)
    relay_shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Producer permissions and money guardrails (CONTRACT §7; service.guardrails.policy); none when
    # unset.
    relay_policy_file: Path | None = None

    # --- operations ---------------------------------------------------------------------------
    relay_log_level: str = "INFO"
    # Prometheus /metrics and /healthz on this port when set (not served when unset).
    relay_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    relay_metrics_host: str = "127.0.0.1"
    # The standard OpenTelemetry variables tracing is set up from (service.telemetry.tracing);
    # the SDK and the exporter read the rest of theirs (sampler, headers, timeouts) themselves.
    otel_sdk_disabled: str = ""
    otel_traces_exporter: str = ""
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_protocol: str | None = None
    otel_exporter_otlp_traces_protocol: str | None = None
    otel_service_name: str | None = None
    otel_resource_attributes: str = ""

    # --- the operator console (`bss-relay console`, CONTRACT §10; service.ops.console) ------
    relay_console_host: str = "127.0.0.1"
    relay_console_port: int = Field(default=8090, ge=0, le=65535)
    # Users, roles and the SHA-256 of their tokens (YAML or JSON); the console refuses to
    # start without it.
    relay_console_users_file: Path | None = None
    # Serve HTTPS with this certificate chain and key (PEM); both or neither.
    relay_console_tls_cert: Path | None = None
    relay_console_tls_key: Path | None = None
    # Mark the session cookie Secure although this process serves plain HTTP: it sits behind
    # a reverse proxy that terminates TLS (implied by the TLS options above).
    relay_console_secure_cookie: bool = False
    # A browser session ends this long after sign-in.
    relay_console_session_s: float = Field(default=8 * 3600.0, gt=0, le=7 * 86400.0)
    # --- end of the console's settings ------------------------------------------------------

    @field_validator("relay_rate_limits", mode="before")
    @classmethod
    def _parse_limits(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("amqp_url")
    @classmethod
    def _parse_amqp_url(cls, value: str) -> str:
        parse_urls(value)  # every node a well-formed AMQP URL; the error masks passwords
        return value

    @field_validator("relay_source_address", mode="after")
    @classmethod
    def _an_ip_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return str(ipaddress.ip_address(value.strip()))  # ValueError names a bad address

    @model_validator(mode="after")
    def _egress_defaults_to_the_source(self) -> Settings:
        if not self.relay_egress.strip():
            # frozen model: set once, while validating
            object.__setattr__(self, "relay_egress", self.relay_source_address or "default")
        return self

    @model_validator(mode="after")
    def _secret_key_from_file(self) -> Settings:
        if self.bss_secret_key_file is None:
            return self
        if self.bss_secret_key is not None:
            raise ValueError("set BSS_SECRET_KEY or BSS_SECRET_KEY_FILE, not both")
        # frozen model: the one place the secret is filled in, during validation
        object.__setattr__(self, "bss_secret_key", read_secret_file(self.bss_secret_key_file))
        return self

    @model_validator(mode="after")
    def _one_source_of_partners(self) -> Settings:
        inline = [self.bss_partner_id, self.bss_access_key, self.bss_secret_key]
        if any(v is not None for v in inline) and not all(v is not None for v in inline):
            raise ValueError("BSS_PARTNER_ID, BSS_ACCESS_KEY and BSS_SECRET_KEY go together")
        return self

    def partners(self) -> dict[str, PartnerAccount]:
        """Every configured partner account, by partner id (inline variables and the file)."""
        return self.api.partners()

    # --- the groups each step of the runtime receives ----------------------------------------

    @property
    def broker(self) -> BrokerSettings:
        return BrokerSettings(
            url=self.amqp_url,
            queue_prefix=self.relay_queue_prefix,
            queue_type=self.relay_queue_type,
        )

    @property
    def store(self) -> StoreSettings:
        return StoreSettings(
            url=self.store_url,
            lease=timedelta(seconds=self.relay_lease_s),
            retention=timedelta(days=self.relay_retention_days),
        )

    @property
    def pacing(self) -> PacingSettings:
        return PacingSettings(
            rate_limits=dict(self.relay_rate_limits),
            egress=self.relay_egress,
            guard_s=self.relay_rate_guard_ms / 1000,
            guard_max_s=self.relay_rate_guard_max_ms / 1000,
            hold_s=self.relay_hold_s,
        )

    @property
    def api(self) -> ApiSettings:
        inline = None
        if self.bss_partner_id and self.bss_access_key and self.bss_secret_key:
            inline = PartnerAccount(
                partner_id=self.bss_partner_id,
                access_key=self.bss_access_key,
                secret_key=self.bss_secret_key,
                agency_name=self.bss_agency_name,
            )
        return ApiSettings(
            bss_endpoint=self.bss_endpoint,
            iam_endpoint=self.iam_endpoint,
            source_address=self.relay_source_address,
            http_connections=self.relay_http_connections,
            http_timeout_s=self.relay_http_timeout_s,
            connect_timeout_s=self.relay_connect_timeout_s,
            throttle_retries=self.relay_throttle_retries,
            credential_duration_s=self.relay_credential_duration_s,
            credential_refresh_margin_s=self.relay_credential_refresh_margin_s,
            credential_cache_size=self.relay_credential_cache_size,
            partners_file=self.bss_partners_file,
            partner=inline,
        )

    @property
    def messages(self) -> MessageSettings:
        return MessageSettings(
            prefetch=self.relay_prefetch,
            max_body_bytes=self.relay_max_body_bytes,
            max_attempts=self.relay_max_attempts,
            retry_base_s=self.relay_retry_base_s,
            retry_max_s=self.relay_retry_max_s,
            store_retry_s=self.relay_store_retry_s,
            deferred_after_s=self.relay_deferred_after_s,
            settle_retry_s=self.relay_settle_retry_s,
            stall_s=self.relay_stall_s,
            shutdown_grace_s=self.relay_shutdown_grace_s,
            policy_file=self.relay_policy_file,
        )

    @property
    def operations(self) -> OperationsSettings:
        return OperationsSettings(
            log_level=self.relay_log_level,
            metrics_host=self.relay_metrics_host,
            metrics_port=self.relay_metrics_port,
            tracing=TracingConfig(
                sdk_disabled=self.otel_sdk_disabled,
                traces_exporter=self.otel_traces_exporter,
                endpoint=self.otel_exporter_otlp_endpoint,
                traces_endpoint=self.otel_exporter_otlp_traces_endpoint,
                protocol=self.otel_exporter_otlp_protocol,
                traces_protocol=self.otel_exporter_otlp_traces_protocol,
                service_name=self.otel_service_name,
                resource_attributes=self.otel_resource_attributes,
            ),
        )
