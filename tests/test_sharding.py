"""Issue 4 acceptance: the same losses on one device and on several meshes of 8 fake devices."""

import jax
import ml_collections
import numpy as np
import pytest

from bert_jax import sharding
from bert_jax.errors import UserError
from bert_jax.modeling import BertConfig
from bert_jax.train_step import build_pretrainer, metrics_from_sums

VOCAB, SEQ, PRED, BATCH = 128, 32, 5, 16


def tiny_config(mesh: dict, accum: int = 1) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_train_steps, c.warmup_steps, c.batch_size, c.seed = 10, 2, BATCH, 0
    c.learning_rate, c.optimizer, c.weight_decay, c.grad_accum_steps = 1e-3, "adamw", 0.01, accum
    model = BertConfig.preset(
        "tiny", vocab_size=VOCAB, intermediate_size=256, max_position_embeddings=64
    )
    c.model = ml_collections.ConfigDict(model.to_dict())
    c.data = ml_collections.ConfigDict(dict(max_seq_length=SEQ, max_predictions_per_seq=PRED))
    c.mesh = ml_collections.ConfigDict(mesh)
    return c


def random_batches(n: int, seed: int = 0) -> list[dict]:
    rs = np.random.RandomState(seed)
    batches = []
    for _ in range(n):
        mask = np.ones((BATCH, SEQ), np.int32)
        mask[::3, SEQ // 2 :] = 0
        batches.append(
            dict(
                input_ids=rs.randint(0, VOCAB, (BATCH, SEQ)).astype(np.int32),
                attention_mask=mask,
                token_type_ids=(np.arange(SEQ)[None] >= SEQ // 3).repeat(BATCH, 0).astype(np.int32),
                masked_lm_positions=rs.randint(0, SEQ // 2, (BATCH, PRED)).astype(np.int32),
                masked_lm_ids=rs.randint(0, VOCAB, (BATCH, PRED)).astype(np.int32),
                masked_lm_weights=(rs.rand(BATCH, PRED) > 0.2).astype(np.float32),
                next_sentence_labels=rs.randint(0, 2, BATCH).astype(np.int32),
            )
        )
    return batches


def run_losses(mesh_axes: dict, devices=None, accum: int = 1, steps: int = 5):
    mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_axes), devices)
    with jax.set_mesh(mesh):
        trainer = build_pretrainer(tiny_config(mesh_axes, accum), mesh)
        state = trainer.init(jax.random.key(0))
        losses = []
        for batch in random_batches(steps):
            state, metrics = trainer.train_step(
                state, trainer.shard_batch(batch), jax.random.key(1)
            )
            losses.append(metrics_from_sums(jax.device_get(metrics))["loss"])
    return np.array(losses), state


@pytest.fixture(scope="module")
def single_device_losses():
    losses, _ = run_losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    return losses


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "mesh_axes",
    [
        dict(data=8, fsdp=1, tensor=1),
        dict(data=1, fsdp=8, tensor=1),
        dict(data=2, fsdp=2, tensor=2),
    ],
    ids=["data8", "fsdp8", "data2_fsdp2_tensor2"],
)
def test_meshes_match_single_device(single_device_losses, mesh_axes):
    losses, state = run_losses(mesh_axes)
    np.testing.assert_allclose(losses, single_device_losses, rtol=1e-5)
    assert losses[-1] < losses[0]  # the steps really train
    layer = state.params["bert"]["encoder"]["layer_0"]
    spec = lambda x: tuple(x.sharding.spec)  # noqa: E731
    fsdp = "fsdp" if mesh_axes["fsdp"] > 1 else None
    tensor = "tensor" if mesh_axes["tensor"] > 1 else None
    # Unused mesh axes of size 1 may be named or dropped; compare the axes that really split.
    norm = lambda s: tuple(
        a if a and (a != "fsdp" or fsdp) and (a != "tensor" or tensor) else None for a in s
    )  # noqa: E731
    assert norm(spec(layer["intermediate"]["dense"]["kernel"])) == (fsdp, tensor)
    assert norm(spec(layer["output"]["dense"]["kernel"])) == (tensor, fsdp)
    assert norm(spec(layer["attention"]["query"]["dense"]["kernel"])) == (fsdp, tensor)
    assert norm(spec(layer["attention"]["output"]["dense"]["kernel"])) == (tensor, fsdp)
    word = state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert norm(spec(word)) == (tensor, fsdp)
    # The optimizer's moments are sharded like their parameters (FSDP shards optimizer state too).
    adam_mu = state.opt_state[1][0].mu["bert"]["encoder"]["layer_0"]["intermediate"]["dense"][
        "kernel"
    ]
    assert adam_mu.sharding.spec == layer["intermediate"]["dense"]["kernel"].sharding.spec
    if fsdp:
        shard_shape = layer["intermediate"]["dense"]["kernel"].addressable_shards[0].data.shape
        assert shard_shape[0] == 128 // mesh_axes["fsdp"]


def test_gradient_accumulation_exact_without_dropout():
    def no_dropout(accum):
        mesh_axes = dict(data=2, fsdp=1, tensor=1)
        mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_axes), jax.devices()[:2])
        config = tiny_config(mesh_axes, accum)
        config.model.hidden_dropout_prob = 0.0
        config.model.attention_probs_dropout_prob = 0.0
        with jax.set_mesh(mesh):
            trainer = build_pretrainer(config, mesh)
            state = trainer.init(jax.random.key(0))
            out = []
            for batch in random_batches(3):
                state, metrics = trainer.train_step(
                    state, trainer.shard_batch(batch), jax.random.key(1)
                )
                out.append(metrics_from_sums(jax.device_get(metrics))["loss"])
        return np.array(out)

    np.testing.assert_allclose(no_dropout(4), no_dropout(1), rtol=1e-5)


@pytest.mark.parametrize(
    "mesh_axes, message",
    [
        (dict(data=3, fsdp=1, tensor=1), "needs 3 devices but 8"),
        (dict(data=-1, fsdp=-1, tensor=1), "at most one axis"),
        (dict(data=-1, fsdp=3, tensor=1), "does not divide"),
    ],
)
def test_bad_mesh_is_a_user_error(mesh_axes, message):
    with pytest.raises(UserError, match=message):
        sharding.make_mesh(ml_collections.ConfigDict(mesh_axes))
