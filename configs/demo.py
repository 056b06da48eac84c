r"""Demo: a tiny BERT (L2/H128) pretrained on the KJV books bundled in the package.

A few minutes on a 2-core laptop CPU; what `make demo` runs:

  python -m bert_jax.pretrain --config configs/demo.py --workdir runs/demo

`get_config("test")` is the same setup shrunk for the test suite.
"""

from bert_jax.config_lib import pretraining_config, use_test_mode, vocab_size
from bert_jax.data.pipeline import BUNDLED_CORPUS, BUNDLED_VOCAB


def get_config(mode: str = "demo"):
    c = pretraining_config("tiny", max_position_embeddings=128)
    c.data.input_files = str(BUNDLED_CORPUS)
    c.data.vocab_file = str(BUNDLED_VOCAB)
    c.model.vocab_size = vocab_size(BUNDLED_VOCAB)  # 8192, learned from the bundled corpus
    c.data.data_dir = "runs/data"
    c.data.max_seq_length = 128
    c.data.max_predictions_per_seq = 20
    c.batch_size = 32
    c.learning_rate = 1e-3
    c.schedule = "trainer"  # tuned with it; 'bert' (google's) measured NSP 0.683 vs 0.721 at 2000
    c.num_train_steps = 2000
    c.warmup_steps = 100
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.eval_steps = 20
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 2
    c.mesh.data = 1  # one CPU device; -1 would use every device
    if mode == "test":
        use_test_mode(c)
    return c
