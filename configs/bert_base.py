r"""BERT-Base (L12/H768/A12) with the published recipe (Devlin et al. 2018).

Phase 1, 90% of the 1M steps at sequence length 128 with 20 predictions per sequence:

  python -m bert_jax.pretrain --config configs/bert_base.py:phase1 --workdir gs://BUCKET/bert_base_p1 \
      --config.data.input_files='gs://BUCKET/corpus/*.txt' --config.data.vocab_file=vocab.txt \
      --config.data.data_dir=gs://BUCKET/tfds

Phase 2, the last 10% at 512 with 80 predictions, initialised from phase 1's parameters:

  python -m bert_jax.pretrain --config configs/bert_base.py:phase2 --workdir gs://BUCKET/bert_base_p2 \
      --config.init_checkpoint=gs://BUCKET/bert_base_p1 ...

google-research/bert's optimization.py exactly: its AdamW (`adamw_bert`, no bias correction,
weight decay 0.01 off LayerNorm and biases, clipping at global norm 1), learning rate 1e-4 with
10k warmup steps, then linear decay to 0 over the whole run (`schedule='bert'`), batch 256.
"""

from bert_jax.pretraining.config import check_mode, pretraining_config

PRESET = "base"
TOTAL_STEPS = 1_000_000


def recipe(preset: str, phase: str):
    check_mode(phase, ("phase1", "phase2"), f"configs/bert_{preset}.py")
    c = pretraining_config(preset)
    c.batch_size = 256
    c.learning_rate = 1e-4
    c.optimizer = "adamw_bert"  # google's AdamWeightDecayOptimizer
    c.schedule = "bert"  # google's warmup + polynomial decay over num_train_steps
    c.weight_decay = 0.01
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
    c.model.dtype = "bfloat16"
    if phase == "phase1":
        c.num_train_steps = int(TOTAL_STEPS * 0.9)
        c.warmup_steps = 10_000
        c.data.max_seq_length = 128
        c.data.max_predictions_per_seq = 20
    elif phase == "phase2":
        c.num_train_steps = TOTAL_STEPS - int(TOTAL_STEPS * 0.9)
        c.warmup_steps = 1_000
        c.data.max_seq_length = 512
        c.data.max_predictions_per_seq = 80
    else:
        raise ValueError(f"unknown phase {phase!r}: use phase1 or phase2")
    return c


def get_config(phase: str = "phase1"):
    return recipe(PRESET, phase)
