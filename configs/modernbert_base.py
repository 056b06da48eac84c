r"""ModernBERT-base (Warner et al. 2024, arXiv:2412.13663) with its published training recipe.

Phase 1, 1.719T tokens at sequence length 1,024 (warmup, then a constant learning rate):

  python -m bert_jax.pretrain --config configs/modernbert_base.py:phase1 --workdir gs://B/mb_p1 \
      --config.data.input_files='gs://B/corpus/*.txt' --config.data.vocab_file=vocab.txt

Phase 2, context extension to 8,192 (global RoPE theta 160,000): 250B tokens at a constant
3e-4, then a 1-sqrt decay over the last 50B, from phase 1's parameters:

  python -m bert_jax.pretrain --config configs/modernbert_base.py:phase2 --workdir gs://B/mb_p2 \
      --config.init_checkpoint=gs://B/mb_p1 ...

Sources: [yaml] AnswerDotAI/ModernBERT yamls/modernbert/modernbert-base-pretrain.yaml; [paper]
the paper's section 2.2 and appendix A. docs/pretraining.md ("Modern encoder recipe") lists
where this differs and why. The architecture block needs the modern-encoder BertConfig fields.
"""

import math

from bert_jax.pretraining.config import check_mode, pretraining_config

SEQ_PHASE1, SEQ_PHASE2 = 1024, 8192
TOKENS_PHASE1 = 1_719_000_000_000  # [yaml] max_duration
TOKENS_PHASE2, TOKENS_PHASE2_DECAY = 300_000_000_000, 50_000_000_000  # [paper] 2.2.2


def phase2_rows(batch_size: int) -> int:
    """Rows of a phase-2 batch: phase 1's tokens per batch at 8,192 (the paper gives no batch
    size for context extension; 4608 x 1024 = 576 x 8192 tokens)."""
    return batch_size * SEQ_PHASE1 // SEQ_PHASE2


def warmup_steps_for_tokens(start: int, full: int, tokens: float, seq: int) -> int:
    """Steps of a batch-size warmup (pretraining.step.warmup_batch_size: k = full / start - 1
    equal runs of steps at start, 2 start, ..., k start, i.e. start x k (k + 1) / 2 rows on
    average per k runs) that read `tokens` in all."""
    k = (full - start) // start
    mean_rows = start * (k + 1) / 2
    return math.ceil(tokens / (mean_rows * seq))


def steps_for_tokens(config, tokens: float) -> int:
    """Steps of `config` (with its batch-size warmup) that read `tokens` tokens."""
    seq, full = config.data.max_seq_length, config.batch_size
    start, warm = config.batch_warmup_start_size, config.batch_warmup_steps
    if not start:
        return math.ceil(tokens / (full * seq))
    done, step = 0.0, 0
    k = (full - start) // start
    for run in range(k):  # runs of the warmup, each at one size
        run_steps = -(-warm * (run + 1) // k) + (warm * run // -k)  # ceil - ceil
        per_step = start * (run + 1) * seq
        if done + run_steps * per_step >= tokens:
            return step + math.ceil((tokens - done) / per_step)
        done, step = done + run_steps * per_step, step + run_steps
    return step + math.ceil((tokens - done) / (full * seq))


def recipe(
    phase: str,
    *,
    learning_rate: float,
    batch_size: int,
    batch_warmup_start: int,
    batch_warmup_tokens: float,
    lr_warmup_tokens: float,
):
    """The ModernBERT recipe keys (the model keys are set by the callers)."""
    c = pretraining_config("base")
    # -- recipe --------------------------------------------------------------------------------
    c.optimizer = "stableadamw"  # [yaml] decoupled_stableadamw
    c.adam_b1, c.adam_b2, c.adam_eps = 0.9, 0.98, 1e-6  # [yaml] betas, eps
    # [yaml] weight_decay 1e-5 "decoupled" (p -= 1e-5 x lr / peak x p per step): here it is
    # multiplied by the learning rate (PyTorch's AdamW), so 1e-5 / peak is the same decay.
    c.weight_decay = 1e-5 / learning_rate
    c.max_grad_norm = 0.0  # [yaml] no gradient clipping (StableAdamW clips each update)
    c.learning_rate = learning_rate
    c.schedule = "wsd"  # [yaml] warmup_stable_decay
    c.wsd_decay_shape = "1-sqrt"  # [paper] 2.2.2: the decay is 1-sqrt
    c.end_learning_rate_factor = 0.0  # [yaml] alpha_f 0
    c.data.next_sentence_prediction = False  # [paper] 2.2.1: MLM only, as RoBERTa
    c.data.masked_lm_prob = 0.3  # [yaml] mlm_probability 0.3
    c.data.eval_masked_lm_prob = 0.15  # [yaml] eval_loader mlm_probability 0.15
    c.data.short_seq_prob = 0.0  # rows are filled with document chunks and packed
    c.data.packing = True  # [yaml] sequence_packing
    c.data.max_sequences_per_row = 32
    c.data.lowercase = False  # a cased BPE tokenizer upstream; a cased WordPiece vocab here
    c.seed = 17  # [yaml]
    c.eval_every_steps = 4000  # [yaml] eval_interval 4000ba
    c.checkpoint_every_steps = 4000  # [yaml] save_interval 4000ba
    c.eval_batch_size = 1024  # [yaml] global_eval_batch_size
    c.model.dtype = "bfloat16"  # [yaml] amp_bf16
    if phase == "phase1":
        c.batch_size = batch_size
        c.data.max_seq_length = SEQ_PHASE1
        c.batch_warmup_start_size = batch_warmup_start
        c.batch_warmup_steps = warmup_steps_for_tokens(
            batch_warmup_start, batch_size, batch_warmup_tokens, SEQ_PHASE1
        )
        c.warmup_steps = steps_for_tokens(c, lr_warmup_tokens)
        c.num_train_steps = steps_for_tokens(c, TOKENS_PHASE1)
        c.wsd_decay_fraction = 0.0  # [yaml] t_decay 0tok: phase 1 does not decay
    else:
        c.batch_size = phase2_rows(batch_size)
        c.data.max_seq_length = SEQ_PHASE2
        c.learning_rate = 3e-4  # [paper] 2.2.2: a constant lower learning rate of 3e-4
        c.weight_decay = 1e-5 / c.learning_rate
        # init_checkpoint brings no optimizer state: a short warmup (ours, not the paper's).
        c.warmup_steps = 1000
        c.num_train_steps = steps_for_tokens(c, TOKENS_PHASE2)
        c.wsd_decay_fraction = TOKENS_PHASE2_DECAY / TOKENS_PHASE2  # [paper] the last 50B
    length = c.data.max_seq_length
    c.data.max_predictions_per_seq = round(length * c.data.masked_lm_prob)
    c.model.max_position_embeddings = length
    return c


def architecture(c, *, phase: str, layers: int, hidden: int, heads: int, intermediate: int):
    """ModernBERT's architecture in the modern-encoder BertConfig fields ([yaml] model_config)."""
    m = c.model
    m.vocab_size = 50368  # [yaml] (a multiple of 64); set it to the vocab file's size
    m.num_hidden_layers, m.hidden_size = layers, hidden
    m.num_attention_heads, m.intermediate_size = heads, intermediate
    m.hidden_act = "gelu"  # [yaml] GeGLU's gate
    m.hidden_dropout_prob = 0.0  # [yaml] embed/mlp dropout 0 (attn_out 0.1: no key here)
    m.attention_probs_dropout_prob = 0.0  # [yaml]
    m.layer_norm_eps = 1e-5  # [yaml] norm_kwargs.eps
    m.initializer_range = 0.02
    # -- architecture (the modern-encoder BertConfig fields) ------------------------------------
    m.position_embedding_type = "rope"  # [yaml] attention_layer rope, embedding_layer sans_pos
    m.rope_theta = 160_000.0 if phase == "phase2" else 10_000.0  # [paper] 2.2.2
    m.local_rope_theta = 10_000.0  # [paper] 2.1.1: local layers keep 10,000
    m.ffn_type = "geglu"  # [yaml] mlp_layer glu
    m.norm_type = "layernorm"  # [yaml] normalization layernorm (bias false: use_bias)
    m.pre_layer_norm = True  # [yaml] bert_layer prenorm, final_norm
    m.use_bias = False  # [yaml] attn/mlp biases false, norm bias false
    m.embedding_norm = True  # [yaml] embed_norm
    m.local_attention_window = 128  # [yaml] sliding_window
    m.global_attn_every_n_layers = 3  # [yaml]
    m.type_vocab_size = 0  # no token types
    # transformers' ModernBertConfig classifier_pooling default "cls": the head of [CLS]
    m.pooler = "cls_head"
    return c


def get_config(phase: str = "phase1"):
    check_mode(phase, ("phase1", "phase2"), "configs/modernbert_base.py")
    c = recipe(
        phase,
        learning_rate=8e-4,  # [yaml] lr
        batch_size=4608,  # [yaml] global_train_batch_size
        batch_warmup_start=768,  # [paper] appendix A: 768 -> 4608
        batch_warmup_tokens=50e9,  # [yaml] batch_size_warmup_tokens
        lr_warmup_tokens=3e9,  # [yaml] t_warmup
    )
    return architecture(c, phase=phase, layers=22, hidden=768, heads=12, intermediate=1152)
