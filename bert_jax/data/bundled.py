"""The corpus and vocabulary shipped inside the package (bert_jax/assets): the pretraining
defaults, the demo and the tests. A tiny module, so that a config can name them cheaply."""

from __future__ import annotations

import importlib.resources
import os

_ASSETS = importlib.resources.files("bert_jax") / "assets"
BUNDLED_CORPUS = os.fspath(_ASSETS / "kjv.txt.gz")  # the King James Bible, gzip
BUNDLED_VOCAB = os.fspath(_ASSETS / "kjv_vocab.txt")  # 8192 WordPiece tokens learned from it
