r"""Sentence or sentence-pair regression (e.g. STS-B) from TSV with a numeric `label` column.

  python -m bert_jax.finetune --config configs/finetune/regression.py --workdir runs/stsb \
      --config.init_checkpoint=PATH --config.task.train_file=train.tsv \
      --config.task.dev_file=dev.tsv

A one-output head trained with mean squared error; reports pearson and spearman, the best
checkpoint is kept by pearson. --config.task.tfds_name=glue/stsb reads a prepared TFDS dataset.
`get_config("test")` is a seconds-long setup for the test suite.
"""

from bert_jax.finetune_config import finetuning_config


def get_config(mode: str = "default"):
    c = finetuning_config("regression")
    c.max_seq_length = 128
    c.batch_size = 32
    c.learning_rate = 2e-5
    c.num_train_epochs = 3.0
    if mode == "test":
        c.max_seq_length = 32
        c.batch_size = 8
        c.eval_batch_size = 16
        c.learning_rate = 1e-3
        c.num_train_epochs = 1.0
        c.eval_every_steps = 0
        c.log_every_steps = 5
        c.progress_bar = False
    return c
