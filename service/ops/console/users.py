"""The console's users (``RELAY_CONSOLE_USERS_FILE``, CONTRACT §10): names, roles, tokens.

::

    users:
      alice: {role: operator, token_sha256: 2c26b46b…}   # 64 lowercase hex digits
      bob:   {role: viewer,   token_sha256: fcde2b2e…}

Only the SHA-256 of each token is kept, on disk and in memory; a presented token is hashed and
compared with every user's digest by ``hmac.compare_digest``, all of them every time, so how
long a check takes says nothing about which digest came close. Two users may not share a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Role", "User", "Users", "UsersFileError", "token_digest"]

Role = Literal["viewer", "operator"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class UsersFileError(ValueError):
    """The users file is missing, unreadable or invalid; the message says why (never a token)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role

    @property
    def may_act(self) -> bool:
        """An operator acts (replay, dry runs included; limits; pauses); a viewer reads."""
        return self.role == "operator"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    role: Role
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    users: dict[str, _Entry] = Field(min_length=1)


def token_digest(token: str) -> bytes:
    """The SHA-256 of the token's UTF-8 bytes (what ``token_sha256`` holds, in hex)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsersFileError(f"cannot read the users file {path}: {why}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsersFileError(f"the users file {path} is not valid YAML or JSON: {exc}") from None


def _explain(path: Path, exc: ValidationError) -> UsersFileError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return UsersFileError(f"invalid users file {path}: {problems}")


@dataclass(frozen=True, slots=True)
class Users:
    """Who may use the console; ``authenticate`` maps a token to its user."""

    digests: tuple[tuple[bytes, User], ...]

    @classmethod
    def load(cls, path: Path) -> Users:
        try:
            parsed = _File.model_validate(_parse(path))
        except ValidationError as exc:
            raise _explain(path, exc) from None
        return cls.of({name: (e.role, e.token_sha256) for name, e in parsed.users.items()}, path)

    @classmethod
    def of(cls, entries: dict[str, tuple[Role, str]], source: Path | str = "users") -> Users:
        digests: list[tuple[bytes, User]] = []
        for name, (role, hex_digest) in entries.items():
            if not _valid_name(name):
                raise UsersFileError(
                    f"invalid users file {source}: user name {name!r} must be 1-64 letters, "
                    "digits or . _ @ - (starting with a letter or digit)"
                )
            digests.append((bytes.fromhex(hex_digest), User(name, role)))
        if len({d for d, _ in digests}) != len(digests):
            raise UsersFileError(f"invalid users file {source}: two users share one token")
        return cls(tuple(digests))

    def authenticate(self, token: str) -> User | None:
        """The user whose token this is, else None; constant time in the token."""
        presented = token_digest(token)
        found: User | None = None
        for digest, user in self.digests:  # every digest, always: no early exit
            if hmac.compare_digest(presented, digest):
                found = user
        return found

    @property
    def names(self) -> list[str]:
        return [user.name for _, user in self.digests]


def _valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
