r"""BERT-Large with LAMB at large batch (NVIDIA / MLPerf style, You et al. 2019).

Phase 1: batch 65536 at sequence 128 for 7038 steps (lr 6e-3, 28.43% warmup); phase 2: batch
32768 at 512 for 1563 steps (lr 4e-3, 12.8% warmup). The global batch is reached through
gradient accumulation; lower grad_accum_steps when more devices hold more of the batch.
LAMB as apex FusedLAMB (no weight decay or trust ratio on biases and LayerNorm), and NVIDIA's
PolyWarmUpScheduler curve: linear warmup, then peak * (1 - step / T)^0.5 over the whole run.

  python -m bert_jax.pretrain --config configs/bert_large_lamb.py:phase1 --workdir gs://BUCKET/lamb_p1 \
      --config.data.input_files='gs://BUCKET/corpus/*.txt' --config.data.vocab_file=vocab.txt
  python -m bert_jax.pretrain --config configs/bert_large_lamb.py:phase2 --workdir gs://BUCKET/lamb_p2 \
      --config.init_checkpoint=gs://BUCKET/lamb_p1
"""

from bert_jax.pretraining.config import check_mode, pretraining_config


def get_config(phase: str = "phase1"):
    check_mode(phase, ("phase1", "phase2"), "configs/bert_large_lamb.py")
    c = pretraining_config("large")
    c.optimizer = "lamb"
    c.schedule = "bert"  # decay over all num_train_steps, as PolyWarmUpScheduler
    c.decay_power = 0.5  # NVIDIA's polynomial decay
    c.weight_decay = 0.01
    c.nvlamb = False  # apex FusedLAMB's default: no trust ratio where weight decay is 0
    c.model.dtype = "bfloat16"
    c.log_every_steps = 10
    c.eval_every_steps = 1_000
    c.checkpoint_every_steps = 200
    if phase == "phase1":
        c.batch_size = 65_536
        c.grad_accum_steps = 64
        c.num_train_steps = 7_038
        c.warmup_steps = int(0.2843 * 7_038)
        c.learning_rate = 6e-3
        c.data.max_seq_length = 128
        c.data.max_predictions_per_seq = 20
    elif phase == "phase2":
        c.batch_size = 32_768
        c.grad_accum_steps = 128
        c.num_train_steps = 1_563
        c.warmup_steps = int(0.128 * 1_563)
        c.learning_rate = 4e-3
        c.data.max_seq_length = 512
        c.data.max_predictions_per_seq = 80
        c.model.remat_policy = "dots"
    else:
        raise ValueError(f"unknown phase {phase!r}: use phase1 or phase2")
    return c
