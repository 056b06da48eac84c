r"""Fine-tune a pretrained BERT on a classification, regression, tagging or SQuAD task.

  python -m bert_jax.finetune --config configs/finetune/classification.py --workdir runs/sst2 \
      --config.init_checkpoint=PATH --config.task.train_file=train.tsv \
      --config.task.dev_file=dev.tsv [--config.freeze_encoder --config.do_predict ...]

PATH is a Hugging Face BERT directory or a bert_jax pretraining workdir (or one of its
checkpoints). The same command on the same workdir resumes from its newest checkpoint.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from bert_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from bert_jax import finetune_lib

    try:
        finetune_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
