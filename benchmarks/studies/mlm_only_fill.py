r"""Real tokens per row of MLM-only rows (document chunks) against NSP sentence pairs.

  python -m benchmarks.studies.mlm_only_fill [--seq 128] [--batches 40] [--data_dir /tmp/fill]

On the bundled KJV corpus (configs/demo.py's data), at max_seq_length --seq with 30% masking:
NSP pairs (the BERT recipe), MLM-only chunks one per row, and MLM-only chunks packed (up to 8 per
row). Prints the share of row positions that are real tokens over --batches batches of 256.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import tempfile

import numpy as np

from bert_jax.data import input_pipeline
from bert_jax.data.bundled import BUNDLED_CORPUS, BUNDLED_VOCAB
from bert_jax.pretraining.config import data_config_dict


def fill(data_dir: str, seq: int, batches: int, nsp: bool, packing: bool) -> float:
    """Mean share of real (non-padding) positions per row over `batches` batches of 256."""
    d = data_config_dict()
    d.input_files, d.vocab_file = str(BUNDLED_CORPUS), str(BUNDLED_VOCAB)
    d.data_dir, d.show_progress = data_dir, False
    d.max_seq_length, d.masked_lm_prob = seq, 0.3
    d.max_predictions_per_seq = round(seq * 0.3)
    d.next_sentence_prediction, d.packing, d.max_sequences_per_row = nsp, packing, 8
    d.short_seq_prob = 0.1 if nsp else 0.0
    input_pipeline.prepare_data(d)
    rows = input_pipeline.make_pretraining_iterator(d, split="train", global_batch_size=256, seed=0)
    return float(np.mean([b["attention_mask"].mean() for b in itertools.islice(rows, batches)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--data_dir", default=str(pathlib.Path(tempfile.gettempdir()) / "fill"))
    args = parser.parse_args()
    for name, nsp, packing in [
        ("NSP pairs", True, False),
        ("MLM-only chunks", False, False),
        ("MLM-only chunks, packed", False, True),
    ]:
        share = fill(args.data_dir, args.seq, args.batches, nsp, packing)
        print(f"{name}: {share:.3f} of {args.seq} positions are real tokens")


if __name__ == "__main__":
    main()
