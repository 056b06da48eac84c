r"""Sentence or sentence-pair regression (e.g. STS-B) from TSV with a numeric `label` column.

  python -m bert_jax.finetune --config configs/finetune/regression.py --workdir runs/stsb \
      --config.init_checkpoint=PATH --config.task.train_file=train.tsv \
      --config.task.dev_file=dev.tsv

A one-output head trained with mean squared error; reports pearson and spearman, the best
checkpoint is kept by pearson. --config.task.tfds_name=glue/stsb reads a prepared TFDS dataset.
`get_config("test")` is a seconds-long setup for the test suite.
"""

from bert_jax.finetuning.config import check_mode, finetuning_config, use_test_mode


def get_config(mode: str = "default"):
    check_mode(mode, ("default", "test"), "configs/finetune/regression.py")
    c = finetuning_config("regression")
    c.max_seq_length = 128
    c.batch_size = 32
    c.learning_rate = 2e-5
    c.num_train_epochs = 3.0
    if mode == "test":
        use_test_mode(c)
    return c
