"""Published orders: the index lists (gzip, little-endian uint16) in bert_jax/assets that give a
fetched data set the published files' order and split where their random split was not
recorded."""

from __future__ import annotations

import gzip
import importlib.resources


def published(name: str) -> list[int]:
    """The indices stored in the asset `name`."""
    data = gzip.decompress((importlib.resources.files("bert_jax") / "assets" / name).read_bytes())
    return [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
