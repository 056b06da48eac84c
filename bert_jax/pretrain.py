r"""Pretrain BERT (masked LM + next sentence).

  python -m bert_jax.pretrain --config configs/demo.py --workdir runs/demo \
      [--config.num_train_steps=2000 --config.batch_size=64 ...]

The same command on the same workdir resumes from its newest checkpoint.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from bert_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    from bert_jax import train_lib

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO

    try:
        train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
