r"""Sentence embeddings: a bi-encoder trained on (anchor, positive) pairs from TSV with a header
`sentence1<TAB>sentence2`, with in-batch negatives.

  python -m bert_jax.finetune --config configs/finetune/sentence_embedding.py --workdir runs/emb \
      --config.init_checkpoint=PATH --config.task.train_file=train.tsv \
      --config.task.dev_file=dev.tsv
  python -m bert_jax.export runs/emb --out runs/emb_st --format=sentence-transformers

Mean pooling over real tokens, cross-entropy over 20 x cosine similarity with every positive of
the batch; reports mrr and accuracy_at_1 of each dev anchor's positive among all dev positives,
the best checkpoint is kept by mrr. A row holds both sentences: each gets max_seq_length / 2
tokens. `get_config("test")` is a seconds-long setup for the test suite. See docs/tasks.md.
"""

from bert_jax.finetuning.config import finetuning_config


def get_config(mode: str = "default"):
    return finetuning_config(
        "sentence_embedding", mode
    )  # the one definition, in the installed package
