r"""Token classification (tagging, NER) from CoNLL files: `token<TAB>tag`, a blank line between
sentences. The tag is predicted on each word's first word piece.

  python -m bert_jax.finetune --config configs/finetune/token_classification.py \
      --workdir runs/pos --config.init_checkpoint=PATH \
      --config.task.train_file=../shared/data/tasks/pos/train.conll \
      --config.task.dev_file=../shared/data/tasks/pos/dev.conll

Reports token_accuracy, and seqeval-style entity f1 when the tags are BIO (then the best
checkpoint is kept by f1, else by token_accuracy). `--config.crf=True` adds a CRF layer (tag
transition scores learned on whole sentences and used when decoding; bert_jax/model/crf.py);
`--config.head_window=1` lets the classifier read each piece's neighbours too, and
`--config.adversarial_epsilon=2.0` trains with FGM (the Chinese NER recipe of README.zh-CN.md
uses all three). Sentences longer than max_seq_length continue in further windows, so every
word gets a prediction.
`get_config("test")` is a seconds-long setup for the test suite.
"""

from bert_jax.finetuning.config import finetuning_config


def get_config(mode: str = "default"):
    return finetuning_config(
        "token_classification", mode
    )  # the one definition, in the installed package
