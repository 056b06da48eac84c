"""A run of the modern recipe (MLM only on packed rows, StableAdamW, warmup-stable-decay, batch-size
warmup) on a tiny BERT: the checkpoint at the decay start is kept beside the pruned ones, and a
run resumed from it (mid batch-size warmup, copied into a new workdir as docs/pretraining.md
says to branch a decay) ends exactly where the unbroken run ends."""

import shutil

import jax
import numpy as np
from conftest import demo_config

from bert_jax.pretraining.train import train_and_evaluate
from bert_jax.training.metrics import read_metrics


def modern_tiny(data_dir):
    c = demo_config("test")
    c.data.data_dir = str(data_dir)
    c.data.show_progress = False
    c.mesh.data = -1  # the 8 host devices of the test session; the first rows live on the first
    c.data.next_sentence_prediction = False
    c.data.masked_lm_prob = 0.3
    c.data.max_predictions_per_seq = 19
    c.data.short_seq_prob = 0.0
    c.data.packing = True
    c.data.max_sequences_per_row = 4
    c.optimizer = "stableadamw"
    c.max_grad_norm = 0.0
    c.schedule = "wsd"
    c.wsd_decay_shape = "1-sqrt"
    c.wsd_decay_fraction = 0.5  # decay from step 3 of 6
    c.batch_size = 8
    c.batch_warmup_start_size = 2  # 2, 2, 4, 6 rows, then 8 from step 4
    c.batch_warmup_steps = 4
    c.warmup_steps = 1
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.keep_checkpoints = 1
    return c


def test_decay_start_is_kept_and_a_resume_mid_warmup_is_exact(tmp_path):
    config = modern_tiny(tmp_path / "data")
    unbroken = tmp_path / "unbroken"
    final = train_and_evaluate(config, unbroken)
    assert sorted(p.name for p in (unbroken / "checkpoints").iterdir() if p.name.isdigit()) == ["6"]
    assert [p.name for p in (unbroken / "decay_start").iterdir() if p.name.isdigit()] == ["3"]
    train = [r for r in read_metrics(unbroken) if "mlm_loss" in r]
    assert [r["batch_size"] for r in train] == [2, 2, 4, 6, 8, 8]
    assert not any(k.startswith("nsp_") for r in train for k in r)
    lrs = [r["learning_rate"] for r in train]  # warmup 1, peak to 3, 1-sqrt decay over 3..6
    np.testing.assert_allclose(
        lrs, [0, 1e-3, 1e-3, 1e-3, 1e-3 * (1 - 3**-0.5), 1e-3 * (1 - (2 / 3) ** 0.5)], rtol=1e-5
    )

    branch = tmp_path / "branch"
    (branch / "checkpoints").mkdir(parents=True)
    shutil.copytree(unbroken / "decay_start" / "3", branch / "checkpoints" / "3")
    shutil.copy(unbroken / "config.json", branch / "config.json")
    resumed = train_and_evaluate(config, branch)
    for a, b in zip(jax.tree.leaves(final.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    branch_train = [r for r in read_metrics(branch) if "mlm_loss" in r]
    assert [r["step"] for r in branch_train] == [4, 5, 6]
    for got, want in zip(branch_train, train[3:], strict=True):
        assert got["mlm_loss"] == want["mlm_loss"]
