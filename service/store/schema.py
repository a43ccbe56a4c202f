"""The command store's tables, written once; each backend renders its DDL from them.

A column has a neutral :class:`Kind`; a :class:`Dialect` says how a backend spells it
(SQLite keeps times as fixed-width UTC ISO-8601 text, see :mod:`service.store.sqlite`;
PostgreSQL as ``timestamptz``). CHECK expressions, defaults and partial-index conditions are
written in the SQL both backends share. Opening a store runs, per table in order:
``CREATE TABLE IF NOT EXISTS``, then adds the columns marked ``added`` (they came after the
first release) to a table created before them, then ``CREATE INDEX IF NOT EXISTS``. So a new
database and an old one end with the same tables; the meaning of each ``relay_commands`` column
is in :mod:`service.store.records`, the ledgers' in :mod:`service.store.ledger`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "POSTGRES",
    "SQLITE",
    "STEERING_TABLES",
    "TABLES",
    "Column",
    "Dialect",
    "Index",
    "Kind",
    "Table",
    "add_column",
    "create_indexes",
    "create_table",
    "postgres_ddl",
]


class Kind(StrEnum):
    TEXT = "text"
    INT = "int"  # 32 bits are enough (PostgreSQL integer)
    BIGINT = "bigint"  # 64 bits (money in cents)
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # timezone-aware UTC
    BYTES = "bytes"
    DECIMAL = "decimal"  # exact; no column needs it yet
    FLOAT = "float"  # a rate in requests/s: a measurement, never money


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    not_null: bool = False
    default: bool | int | None = None
    check: str | None = None  # a CHECK on this column, in SQL both backends read alike
    added: bool = False  # added after the first release: ALTER TABLE … ADD COLUMN on old tables


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    columns: tuple[str, ...]
    where: str | None = None  # a partial index's condition


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    checks: tuple[str, ...] = ()  # table CHECKs, in SQL both backends read alike
    indexes: tuple[Index, ...] = ()

    def __post_init__(self) -> None:
        names = {column.name for column in self.columns}
        used = set(self.primary_key).union(*(index.columns for index in self.indexes))
        if not used <= names:
            raise ValueError(f"{self.name}: unknown columns {sorted(used - names)}")
        for column in self.added_columns:
            # what ALTER TABLE … ADD COLUMN can add to a table that has rows, on both backends
            if column.not_null or column.name in self.primary_key:
                raise ValueError(f"{self.name}.{column.name}: an added column must be nullable")

    @property
    def added_columns(self) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if column.added)


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    types: Mapping[Kind, str]
    booleans: tuple[str, str]  # how False and True are written
    pk_not_null: bool  # say NOT NULL on a PRIMARY KEY column too

    def default(self, value: bool | int) -> str:
        if isinstance(value, bool):
            return self.booleans[value]
        return str(value)


SQLITE = Dialect(
    name="sqlite",
    types={
        Kind.TEXT: "TEXT",
        Kind.INT: "INTEGER",
        Kind.BIGINT: "INTEGER",
        Kind.BOOL: "INTEGER",
        Kind.TIMESTAMP: "TEXT",  # 2026-05-09T07:35:25.000000+00:00: text order is time order
        Kind.BYTES: "BLOB",
        Kind.DECIMAL: "TEXT",  # NUMERIC affinity would round through a float
        Kind.FLOAT: "REAL",
    },
    booleans=("0", "1"),
    pk_not_null=True,  # SQLite lets a PRIMARY KEY that is not an INTEGER hold NULL otherwise
)

POSTGRES = Dialect(
    name="postgresql",
    types={
        Kind.TEXT: "text",
        Kind.INT: "integer",
        Kind.BIGINT: "bigint",
        Kind.BOOL: "boolean",
        Kind.TIMESTAMP: "timestamptz",
        Kind.BYTES: "bytea",
        Kind.DECIMAL: "numeric",
        Kind.FLOAT: "double precision",
    },
    booleans=("false", "true"),
    pk_not_null=False,  # implied by PRIMARY KEY
)

_STATUS = "status IN ('received', 'in_flight', 'finished')"

TABLES: tuple[Table, ...] = (
    Table(
        "relay_commands",
        (
            Column("command_id", Kind.TEXT, not_null=True),
            Column("type", Kind.TEXT, not_null=True),
            Column("status", Kind.TEXT, not_null=True, check=_STATUS),
            Column("attempts", Kind.INT, not_null=True, default=0, check="attempts >= 0"),
            Column("call_started_at", Kind.TIMESTAMP),
            Column("note", Kind.BYTES),
            Column("event", Kind.BYTES),
            Column("published_at", Kind.TIMESTAMP),
            Column("owner", Kind.TEXT),
            Column("lease_until", Kind.TIMESTAMP),
            Column("created_at", Kind.TIMESTAMP, not_null=True),
            Column("updated_at", Kind.TIMESTAMP, not_null=True),
            Column("finished_at", Kind.TIMESTAMP),
            Column("fingerprint", Kind.TEXT, added=True),
            Column("requested_by", Kind.TEXT, added=True),
            Column("partner_id", Kind.TEXT, added=True),
            Column("customer_id", Kind.TEXT, added=True),
            Column("body", Kind.BYTES, added=True),
        ),
        primary_key=("command_id",),
        checks=(
            "(owner IS NULL) = (lease_until IS NULL)",
            "(status = 'finished') = (finished_at IS NOT NULL AND event IS NOT NULL)",
        ),
        indexes=(
            Index("relay_commands_finished_at", ("finished_at",), "status = 'finished'"),
            Index(
                "relay_commands_money_created_at",
                ("created_at",),
                "type IN ('renew', 'issue_coupon')",
            ),
        ),
    ),
    Table(
        "relay_effects",
        (
            Column("effect_id", Kind.TEXT, not_null=True),
            Column("command_id", Kind.TEXT, not_null=True),
            Column("created_at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("effect_id",),
    ),
    # The money-guardrail ledgers: see service.store.ledger.
    Table(
        "relay_renewals",
        (
            Column("resource_id", Kind.TEXT, not_null=True),
            Column("command_id", Kind.TEXT, not_null=True),
            Column("customer_id", Kind.TEXT),
            Column("done", Kind.BOOL, not_null=True, default=False),
            Column("renewed_at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("resource_id", "command_id"),
    ),
    Table(
        "relay_coupon_spend",
        (
            Column("command_id", Kind.TEXT, not_null=True),
            Column("customer_id", Kind.TEXT, not_null=True),
            Column("partner_id", Kind.TEXT, not_null=True),
            Column("cents", Kind.BIGINT, not_null=True, check="cents > 0"),
            Column("committed", Kind.BOOL, not_null=True, default=False),
            Column("at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("command_id", "customer_id"),
        indexes=(
            Index("relay_coupon_spend_partner", ("partner_id", "at")),
            Index("relay_coupon_spend_customer", ("customer_id", "at")),
        ),
    ),
)


# Schema version 2 (service.store.versions): what operators steer and see (CONTRACT §9, §10),
# and what replicas publish about themselves about once a second. Meanings in
# service.store.steering.
_BUCKET_KIND = "kind IN ('customer', 'egress')"

STEERING_TABLES: tuple[Table, ...] = (
    Table(
        "relay_limits",  # live limits (`bss-relay quota set`); kind 'all' has key ''
        (
            Column("api", Kind.TEXT, not_null=True),
            Column("kind", Kind.TEXT, not_null=True, check="kind IN ('all', 'customer', 'egress')"),
            Column("key", Kind.TEXT, not_null=True),
            Column("rate", Kind.FLOAT, not_null=True, check="rate > 0"),
            Column("set_by", Kind.TEXT, not_null=True),
            Column("set_at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("api", "kind", "key"),
    ),
    Table(
        "relay_pauses",  # `bss-relay pause`; api '' pauses every operation of the customer
        (
            Column("customer", Kind.TEXT, not_null=True),
            Column("api", Kind.TEXT, not_null=True),
            Column("set_by", Kind.TEXT, not_null=True),
            Column("set_at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("customer", "api"),
    ),
    Table(
        "relay_audit",  # operators' actions: replay, quota_set, quota_reset, pause, resume
        (
            Column("audit_id", Kind.TEXT, not_null=True),
            Column("at", Kind.TIMESTAMP, not_null=True),
            Column("actor", Kind.TEXT, not_null=True),
            Column("action", Kind.TEXT, not_null=True),
            Column("command_id", Kind.TEXT),
            Column("customer_id", Kind.TEXT),
            Column("detail", Kind.TEXT, not_null=True),  # a JSON object
        ),
        primary_key=("audit_id",),
        indexes=(
            Index("relay_audit_at", ("at",)),
            Index("relay_audit_command", ("command_id",)),
            Index("relay_audit_customer", ("customer_id",)),
        ),
    ),
    Table(
        "relay_replicas",  # every serving replica, seen about once a second
        (
            Column("owner", Kind.TEXT, not_null=True),
            Column("egress", Kind.TEXT, not_null=True),
            Column("started_at", Kind.TIMESTAMP, not_null=True),
            Column("seen_at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("owner",),
    ),
    Table(
        "relay_waiting",  # commands a replica knows to wait: for a bucket, paused, or delayed
        (
            Column("command_id", Kind.TEXT, not_null=True),
            Column("owner", Kind.TEXT, not_null=True),
            Column(
                "state", Kind.TEXT, not_null=True, check="state IN ('waiting', 'paused', 'delayed')"
            ),
            Column("api", Kind.TEXT),
            Column("kind", Kind.TEXT),
            Column("key", Kind.TEXT),
            Column("priority", Kind.TEXT),
            Column("since", Kind.TIMESTAMP, not_null=True),
            Column("expected_at", Kind.TIMESTAMP),  # expected start; a delayed one's retry
            Column("until", Kind.TIMESTAMP, not_null=True),  # stale after this if not renewed
            Column("customer", Kind.TEXT, added=True),  # the ParentUid its call is for
            Column("queued_at", Kind.TIMESTAMP, added=True),  # parked: when it went in
        ),
        primary_key=("command_id",),
        indexes=(Index("relay_waiting_bucket", ("api", "kind", "key")),),
    ),
    Table(
        "relay_bucket_reports",  # what each replica's pacing says of a bucket it used lately
        (
            Column("owner", Kind.TEXT, not_null=True),
            Column("api", Kind.TEXT, not_null=True),
            Column("kind", Kind.TEXT, not_null=True, check=_BUCKET_KIND),
            Column("key", Kind.TEXT, not_null=True),
            Column("limit_rate", Kind.FLOAT),  # requests/s in force; NULL: unlimited
            Column("rate", Kind.FLOAT),  # requests/s pacing uses now
            Column("throttled_5m", Kind.INT, not_null=True, default=0),
            Column("used_at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("owner", "api", "kind", "key"),
    ),
    Table(
        "relay_lines",  # commands parked on the broker for a bucket, one queue per line
        (
            Column("api", Kind.TEXT, not_null=True),
            Column("customer", Kind.TEXT, not_null=True),
            Column("priority", Kind.TEXT, not_null=True),
            Column("queue", Kind.TEXT, not_null=True),
            Column("parked", Kind.BIGINT, not_null=True, default=0),  # ever parked into it
            Column("pulled", Kind.BIGINT, not_null=True, default=0),  # ever taken out of it
            Column("next_deadline", Kind.TIMESTAMP),  # the soonest deadline parked in it
            Column("updated_at", Kind.TIMESTAMP, not_null=True),
            # of those pulled, settled (their call made, or parked again); NULL: as pulled
            # (a line from before schema step 3)
            Column("settled", Kind.BIGINT, added=True),
        ),
        primary_key=("api", "customer", "priority"),
    ),
    Table(
        "relay_dead_letters",  # the last dead-lettering of each command id (for `why`)
        (
            Column("command_id", Kind.TEXT, not_null=True),
            Column("type", Kind.TEXT),
            Column("customer_id", Kind.TEXT),
            Column("reason", Kind.TEXT, not_null=True),
            Column("message", Kind.TEXT),
            Column("dead_lettered_at", Kind.TIMESTAMP, not_null=True),
        ),
        primary_key=("command_id",),
    ),
)


def _column(table: Table, column: Column, dialect: Dialect, *, in_create: bool) -> str:
    parts = [column.name, dialect.types[column.kind]]
    inline_key = in_create and table.primary_key == (column.name,)
    if inline_key:
        parts.append("PRIMARY KEY")
    if column.not_null and (dialect.pk_not_null or not inline_key):
        parts.append("NOT NULL")
    if column.default is not None:
        parts.append(f"DEFAULT {dialect.default(column.default)}")
    if column.check is not None:
        parts.append(f"CHECK ({column.check})")
    return " ".join(parts)


def create_table(table: Table, dialect: Dialect) -> str:
    lines = [_column(table, column, dialect, in_create=True) for column in table.columns]
    if len(table.primary_key) > 1:
        lines.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    lines.extend(f"CHECK ({check})" for check in table.checks)
    body = ",\n    ".join(lines)
    return f"CREATE TABLE IF NOT EXISTS {table.name} (\n    {body}\n)"


def add_column(table: Table, column: Column, dialect: Dialect) -> str:
    """SQLite has no ``ADD COLUMN IF NOT EXISTS``: its caller asks which columns exist."""
    return f"ALTER TABLE {table.name} ADD COLUMN {_column(table, column, dialect, in_create=False)}"


def create_indexes(table: Table) -> tuple[str, ...]:
    return tuple(
        f"CREATE INDEX IF NOT EXISTS {index.name} ON {table.name} ({', '.join(index.columns)})"
        + ("" if index.where is None else f" WHERE {index.where}")
        for index in table.indexes
    )


def postgres_ddl(tables: tuple[Table, ...] = TABLES) -> tuple[str, ...]:
    """Every statement, in order, that creates or brings up to date PostgreSQL's ``tables``."""
    statements: list[str] = []
    for table in tables:
        statements.append(create_table(table, POSTGRES))
        if table.added_columns:
            adds = ",\n    ".join(
                f"ADD COLUMN IF NOT EXISTS {_column(table, c, POSTGRES, in_create=False)}"
                for c in table.added_columns
            )
            statements.append(f"ALTER TABLE {table.name}\n    {adds}")
        statements.extend(create_indexes(table))
    return tuple(statements)
