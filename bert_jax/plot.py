r"""Training curves of one or more runs, side by side, from their WORKDIR/metrics.jsonl.

  python -m bert_jax.plot runs/demo [runs/other ...] --out curves.png [--smooth 0.6]

Pretraining runs get loss, masked-LM and next-sentence accuracy, learning rate, throughput and
gradient norm; fine-tuning runs their loss, dev scores, learning rate, examples/s and gradient
norm (docs/pretraining.md shows the panels). Workdirs may be on gs://. In a notebook,
`bert_jax.training.plots.plot_runs(["runs/demo"])` returns the figure.
"""

import sys

from bert_jax.training.plots import main

if __name__ == "__main__":
    sys.exit(main())
