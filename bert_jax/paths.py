"""Paths a user gives (flags, config keys): told local or remote, and resolved, in one place.

A path holding "://" (gs://bucket/dir, s3://...) is remote and kept exactly as
written; any other is local: `~` expanded and made absolute (Orbax requires absolute paths).
Every layer may import this module; files are then reached through etils.epath.
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path) -> bool:
    """True for a URL (gs://, s3://, ...): a path this machine's file system does not hold."""
    return "://" in str(path)


def resolved(path) -> str:
    """The path as text: a URL as it is; a local path with `~` expanded, made absolute."""
    text = os.fspath(path)
    return text if is_remote(text) else os.path.abspath(os.path.expanduser(text))


def as_path(path) -> epath.Path:
    """`resolved(path)` as an etils.epath.Path (local or gs://, one API)."""
    return epath.Path(resolved(path))
