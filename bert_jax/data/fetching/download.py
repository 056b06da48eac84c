"""Archives from the web, cached: $BERT_JAX_CACHE/downloads (default ~/.cache/bert_jax), fetched
over HTTPS with a progress bar, or given as a file (--from); every one is checked against the
sha256 pinned in code before anything is built from it."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pathlib
import urllib.error
import urllib.request

from tqdm.auto import tqdm

from bert_jax.errors import UserError
from bert_jax.paths import as_path

_CHUNK = 1 << 20
# No network, a refused or dropped connection, an HTTP error: not a full disk (that is the cache's).
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


@dataclasses.dataclass(frozen=True)
class Archive:
    """A downloadable file: where it is served and the sha256 of its bytes."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def cache_dir() -> pathlib.Path:
    """$BERT_JAX_CACHE, else ~/.cache/bert_jax (read now, not at import)."""
    return pathlib.Path(os.environ.get("BERT_JAX_CACHE") or "~/.cache/bert_jax").expanduser()


def cached_path(archive: Archive) -> pathlib.Path:
    """Where `archive` is kept once downloaded."""
    return cache_dir() / "downloads" / archive.filename


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with as_path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def obtain(archive: Archive, given=None) -> str:
    """The path of a checked copy of `archive`: `given` (a file the user downloaded), else the
    cached copy, else a fresh download into the cache. Raises UserError when the bytes are not
    the pinned ones, or when the machine cannot download and nothing is cached."""
    if given:
        if not as_path(given).is_file():
            raise UserError(
                f"--from {given}: no such file (give the downloaded {archive.filename})"
            )
        _check(given, archive, f"--from {given}", "give that exact file")
        return os.fspath(given)
    path = cached_path(archive)
    if path.is_file():
        _check(path, archive, f"the cached {path}", "delete it to download it again")
        return os.fspath(path)
    _download(archive, path)
    return os.fspath(path)


def _check(path, archive: Archive, what: str, fix: str) -> None:
    found = sha256_of(path)
    if found != archive.sha256:
        raise UserError(
            f"{what} has sha256 {found}, not the pinned {archive.sha256} of {archive.url}: {fix}"
        )


def _download(archive: Archive, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(archive.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                partial.open("wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=archive.filename) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except _NETWORK_ERRORS as err:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"cannot download {archive.url} ({getattr(err, 'reason', None) or err}) and it is not "
            f"in {path.parent}: download it where you can and pass --from=FILE"
        ) from None
    try:
        _check(partial, archive, f"the download of {archive.url}", "try again later")
    except UserError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
