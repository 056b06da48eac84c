"""The `python -m bert_jax.data.fetch NAME --out DIR [--from FILE]` command: obtains the named
data set's archive (cache, download or --from), builds its files under --out and prints each
file's sha256 and count."""

from __future__ import annotations

from absl import flags

from bert_jax import entry
from bert_jax.data.fetching import brown, download, kjv, sentiment, zh
from bert_jax.errors import UserError
from bert_jax.paths import as_path

# name -> module with ARCHIVE and build(archive, out)
SOURCES = {"zh": zh, "brown": brown, "kjv": kjv, "sentiment": sentiment}


def define_flags() -> None:
    """Defines the command's flags: called by its entry module only (absl flags are global)."""
    global _OUT, _FROM
    _OUT = flags.DEFINE_string("out", None, "Directory to build the files in (local or gs://).")
    _FROM = flags.DEFINE_string(
        "from",
        None,
        "The archive, already downloaded (for a machine without internet); otherwise it is "
        "downloaded once into $BERT_JAX_CACHE/downloads (default ~/.cache/bert_jax).",
    )


def main(argv: list[str]) -> None:
    usage = f"python -m bert_jax.data.fetch NAME --out DIR, NAME one of: {', '.join(SOURCES)}"
    if len(argv) != 2 or argv[1] not in SOURCES:
        given = " ".join(argv[1:]) or "no name"
        raise UserError(f"{given}: not a data set this command builds ({usage})")
    if not _OUT.value:
        raise UserError(f"--out is required ({usage})")
    entry.check_output_dir(_OUT.value, "--out")
    source = SOURCES[argv[1]]
    archive = download.obtain(source.ARCHIVE, _FROM.value)
    print(f"building {argv[1]} from {archive} in {_OUT.value}", flush=True)
    files, left_out = source.build(archive, _OUT.value)
    for name, count, what in files:
        path = as_path(_OUT.value) / name
        print(f"{download.sha256_of(path)}  {name}  {count:,} {what}")
    for line in left_out:
        print(f"left out: {line}")
