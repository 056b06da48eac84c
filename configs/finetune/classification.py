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

from bert_jax.finetuning.config import check_mode, finetuning_config, use_test_mode


def get_config(mode: str = "default"):
    check_mode(mode, ("default", "test"), "configs/finetune/classification.py")
    c = finetuning_config("classification")
    c.max_seq_length = 128
    c.batch_size = 32
    c.learning_rate = 2e-5
    c.num_train_epochs = 3.0
    if mode == "test":
        use_test_mode(c)
    return c
