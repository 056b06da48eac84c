r"""Demo of the modern-encoder recipe: a tiny ModernBERT-style model pretrained on the KJV books
bundled in the package, on a laptop CPU (compare configs/demo.py, the BERT recipe).

  python -m bert_jax.pretrain --config configs/modern_demo.py --workdir runs/modern_demo

The recipe of configs/modernbert_base.py at demo scale: masked-LM only at 30% masking on packed
rows of document chunks, StableAdamW, a warmup-stable-1-sqrt-decay schedule whose decay start
is kept in runs/modern_demo/decay_start, and a batch-size warmup 32 -> 128. `get_config("test")`
is the same shrunk for the test suite; `recipe()` applies the recipe keys alone (the tests put
them on a BERT-architecture config).
"""

from bert_jax.pretraining.config import bundled_demo_config, check_mode, use_test_mode


def recipe(c):
    """The recipe keys on a pretraining config `c`, at demo scale (returns c)."""
    c.data.next_sentence_prediction = False
    c.data.masked_lm_prob = 0.3
    c.data.eval_masked_lm_prob = 0.15  # held-out accuracy at BERT's rate, as ModernBERT
    c.data.short_seq_prob = 0.0
    c.data.packing = True
    c.data.max_sequences_per_row = 8
    c.data.max_seq_length = 64
    c.data.max_predictions_per_seq = 19  # 30% of a full 64-token row, rounded
    c.optimizer = "stableadamw"
    c.adam_b2 = 0.98
    c.weight_decay = 0.0125  # ModernBERT's 1e-5 decoupled at peak 8e-4 (modernbert_base.py)
    c.max_grad_norm = 0.0
    c.learning_rate = 1e-3
    c.schedule = "wsd"
    c.wsd_decay_shape = "1-sqrt"
    c.wsd_decay_fraction = 0.2
    c.batch_size = 128
    c.batch_warmup_start_size = 32
    c.batch_warmup_steps = 200
    c.num_train_steps = 1500
    c.warmup_steps = 50
    return c


def get_config(mode: str = "demo"):
    check_mode(mode, ("demo", "test"), "configs/modern_demo.py")
    c = bundled_demo_config()
    recipe(c)
    # -- architecture (the modern-encoder BertConfig fields) ------------------------------------
    m = c.model
    m.position_embedding_type = "rope"
    m.rope_theta = 10_000.0
    m.local_rope_theta = 10_000.0
    m.ffn_type = "geglu"
    m.norm_type = "layernorm"
    m.pre_layer_norm = True
    m.use_bias = False
    m.embedding_norm = True
    m.local_attention_window = 32
    m.global_attn_every_n_layers = 3
    m.type_vocab_size = 0
    m.pooler = "cls_head"  # ModernBertForSequenceClassification's default (classifier_pooling cls)
    if mode == "test":
        use_test_mode(c)
        c.data.max_predictions_per_seq = 19  # 30% of 64
        c.batch_warmup_start_size = 4
        c.batch_warmup_steps = 4
        c.wsd_decay_fraction = 0.5
    return c
