r"""Multi-label classification: a sentence (or pair) with a set of labels, from TSV with a header
`sentence<TAB>labels` (or `sentence1<TAB>sentence2<TAB>labels`); labels joined by `|`.

  python -m bert_jax.finetune --config configs/finetune/multilabel.py --workdir runs/ml \
      --config.init_checkpoint=PATH --config.task.train_file=train.tsv \
      --config.task.dev_file=dev.tsv

One sigmoid per label (binary cross-entropy), a label is predicted above probability 0.5; reports
micro_f1, macro_f1, subset_accuracy and f1/LABEL; the best checkpoint is kept by micro_f1.
`get_config("test")` is a seconds-long setup for the test suite. See docs/tasks.md.
"""

from bert_jax.finetuning.config import finetuning_config


def get_config(mode: str = "default"):
    return finetuning_config("multilabel", mode)  # the one definition, in the installed package
