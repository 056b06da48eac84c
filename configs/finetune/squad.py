r"""Extractive question answering, SQuAD v1.1 JSON (google-research/bert run_squad defaults).

  python -m bert_jax.finetune --config configs/finetune/squad.py --workdir runs/qa \
      --config.init_checkpoint=PATH \
      --config.task.train_file=../shared/data/tasks/qa/train.json \
      --config.task.dev_file=../shared/data/tasks/qa/dev.json

Long contexts are cut into windows doc_stride tokens apart; questions are cut to
max_query_length; answers are the best n_best_size start/end pairs of at most max_answer_length
tokens, mapped back to the original text. Reports exact_match and f1 (official v1.1
normalisation, as fractions); the best checkpoint is kept by f1. --config.task.tfds_name=squad
reads a prepared TFDS dataset. `get_config("test")` is a seconds-long setup for the test suite.
"""

from bert_jax.finetuning.config import finetuning_config


def get_config(mode: str = "default"):
    return finetuning_config("squad", mode)  # the one definition, in the installed package
