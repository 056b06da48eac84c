r"""A small Chinese BERT pretrained on a CPU in about 15 minutes (issue 17; README.zh-CN.md).

Vocabulary and data first (jieba word boundaries for whole-word masking need `bert_jax[zh]`):

  python -m bert_jax.data.prepare --input_files=../shared/data/zh/corpus/pretrain.txt \
      --train_vocab_size=8000 --vocab_file=runs/zh/vocab.txt --data_dir=runs/zh/data \
      --word_segmenter=jieba

then pretraining (the same command resumes after an interruption):

  python -m bert_jax.pretrain --config configs/zh_small.py --workdir runs/zh/pretrain \
      --config.data.whole_word_masking=True

The data keys default to the paths above (`data.input_files`, `data.vocab_file`,
`data.data_dir`); override them for another corpus, and `model.vocab_size` with another
`--train_vocab_size` (a learned vocabulary never has more tokens than asked for; unused rows of
the embedding table are harmless). Characters are the tokens (every CJK character is split off
before WordPiece, as in google-research/bert and bert-base-chinese), so sequences of 128 tokens
hold sentences of up to about 126 characters.

The recipe: BERT-Tiny's shape (L2 / H128 / A2, google-research/bert's smallest release) without
dropout, at sequence 128 with 20 predictions, batch 32, AdamW at 2e-3 after 300 warmup steps,
linearly decayed over 6,000 steps (about 25 million token positions, 10 passes over the corpus). That is about 1,500 CPU-seconds of
a 2-core x86 machine (15 minutes when the machine is idle); benchmarks/zh_end_to_end.py measures
what it gives on Chinese NER and sentiment against random initialisation and a character CRF.

`get_config("test")` is a seconds-long variant for the test suite (an L1 / H32 model).
"""

from bert_jax.config_lib import check_mode, pretraining_config, use_test_mode

VOCAB_SIZE = 8000  # --train_vocab_size of the prepare command


def get_config(mode: str = "default"):
    check_mode(mode, ("default", "test"), "configs/zh_small.py")
    c = pretraining_config("tiny", vocab_size=VOCAB_SIZE, max_position_embeddings=128)
    c.data.input_files = "../shared/data/zh/corpus/pretrain.txt"
    c.data.vocab_file = "runs/zh/vocab.txt"
    c.data.data_dir = "runs/zh/data"
    c.data.word_segmenter = "jieba"  # word boundaries, read by data.whole_word_masking
    # No dropout while pretraining: a short budget underfits rather than overfits (Geiping &
    # Goldstein's "Cramming" drop it too); fine-tuning sets its own (hidden_dropout_prob 0.1).
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
    c.data.max_seq_length = 128
    c.data.max_predictions_per_seq = 20
    c.batch_size = 32
    c.learning_rate = 2e-3
    c.schedule = "trainer"  # decay from the peak over the steps after warmup, as tuned
    c.warmup_steps = 300
    c.num_train_steps = 6000
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.eval_steps = 20
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    c.mesh.data = 1  # one CPU device; -1 would use every device
    if mode == "test":
        use_test_mode(c)
    return c
