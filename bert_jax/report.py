r"""What a pretraining run learned, in a few lines: held-out accuracies, fill-mask, what next.

  python -m bert_jax.report runs/demo [--prompt "the lord is my [MASK]." ...]

Reads WORKDIR's metrics (held-out masked-LM and next-sentence accuracy at the first and last
evaluation, next to the training time) and fills the masks of a few prompts with the newest
checkpoint. `make demo` ends with it.
"""

import sys

from bert_jax.pretraining.report import main

if __name__ == "__main__":
    sys.exit(main())
