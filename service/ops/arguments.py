"""Argument types shared by the CLI verbs."""

from __future__ import annotations

import argparse
from datetime import datetime

__all__ = ["positive_int", "rfc3339"]


def positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def rfc3339(text: str) -> datetime:
    """A timestamp with its UTC offset (``2026-11-24T10:00:00Z``, ``…+08:00``)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset, e.g. Z or +08:00")
    return moment
