r"""Sentence or sentence-pair classification from TSV with a header (`sentence,label` or
`sentence1,sentence2,label`; the columns decide; extra columns are ignored).

  python -m bert_jax.finetune --config configs/finetune/classification.py --workdir runs/sentiment \
      --config.init_checkpoint=PATH \
      --config.task.train_file=../shared/data/tasks/sentiment/train.tsv \
      --config.task.dev_file=../shared/data/tasks/sentiment/dev.tsv

Reports accuracy, macro_f1 and mcc; the best checkpoint is kept by accuracy. A TFDS dataset the
user has prepared works instead of the files: --config.task.tfds_name=glue/sst2.
`get_config("test")` is a seconds-long setup for the test suite.
"""

from bert_jax.finetuning.config import finetuning_config


def get_config(mode: str = "default"):
    return finetuning_config("classification", mode)  # the one definition, in the installed package
