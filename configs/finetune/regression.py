r"""Sentence or sentence-pair regression (e.g. STS-B) from TSV with a numeric `label` column.

  python -m bert_jax.finetune --config configs/finetune/regression.py --workdir runs/stsb \
      --config.init_checkpoint=PATH --config.task.train_file=train.tsv \
      --config.task.dev_file=dev.tsv

A one-output head trained with mean squared error; reports pearson and spearman, the best
checkpoint is kept by pearson. --config.task.tfds_name=glue/stsb reads a prepared TFDS dataset.
`get_config("test")` is a seconds-long setup for the test suite.
"""

from bert_jax.finetuning.config import finetuning_config


def get_config(mode: str = "default"):
    return finetuning_config("regression", mode)  # the one definition, in the installed package
