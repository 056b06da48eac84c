"""The same losses on one device and on several meshes of 8 fake devices."""

import jax
import ml_collections
import numpy as np
import pytest

from bert_jax.errors import UserError
from bert_jax.model.modeling import BertConfig
from bert_jax.pretraining.step import build_pretrainer, metrics_from_sums
from bert_jax.training import sharding

VOCAB, SEQ, PRED, BATCH = 128, 32, 5, 16


def tiny_config(mesh: dict, accum: int = 1, **model_fields) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_train_steps, c.warmup_steps, c.batch_size, c.seed = 10, 2, BATCH, 0
    c.learning_rate, c.optimizer, c.weight_decay, c.grad_accum_steps = 1e-3, "adamw", 0.01, accum
    model = BertConfig.preset(
        "tiny", vocab_size=VOCAB, intermediate_size=256, max_position_embeddings=64, **model_fields
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


def run_losses(mesh_axes: dict, devices=None, accum: int = 1, steps: int = 5, **model_fields):
    mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_axes), devices)
    with jax.set_mesh(mesh):
        trainer = build_pretrainer(tiny_config(mesh_axes, accum, **model_fields), mesh)
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


# ---------------------------------------------------------------------------------------------
# Mesh edge cases


def test_fsdp_must_divide_hidden_size():
    from bert_jax.pretraining.config import pretraining_config, validate_pretraining_config

    config = pretraining_config("tiny")
    config.mesh.data, config.mesh.fsdp = 2, 3  # hidden_size 128 does not split 3 ways
    config.batch_size = 12
    with pytest.raises(UserError, match="mesh.fsdp 3 does not divide model hidden_size 128"):
        validate_pretraining_config(config, 6, check_files=False)


def test_a_parameter_the_mesh_cannot_split_is_one_line():
    """Fine-tuning builds its parameter shardings with sharded_abstract too: an intermediate size
    of 510 over tensor=4 is a one-line UserError naming the config key, not XLA's tiling message
    at jit. (The vocabulary is padded to a multiple of 128, so it always splits.)"""
    from bert_jax.model.modeling import BertModel

    model = BertModel(BertConfig.preset("tiny", vocab_size=30522, intermediate_size=510))
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=1, tensor=4)))

    def init(rng):
        ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
        return model.init(rng, ids)["params"]

    with pytest.raises(UserError) as error:
        sharding.sharded_abstract(init, mesh, sharding.DEFAULT_RULES)
    message = str(error.value)
    assert "mesh.tensor 4 does not divide model.intermediate_size 510" in message, message
    assert "\n" not in message and "intermediate" in message


def test_topology_failure_is_an_error_unless_opted_in(monkeypatch, capsys):
    from jax.experimental import mesh_utils

    def refuse(*args, **kwargs):
        raise ValueError("cannot map logical mesh onto the physical torus")

    monkeypatch.setattr(mesh_utils, "create_device_mesh", refuse)
    axes = sharding.default_mesh_config()
    axes.data, axes.fsdp = 4, 2
    with pytest.raises(UserError, match=r"cannot be laid out on the topology of the 8 cpu devices"):
        sharding.make_mesh(axes)
    axes.reshape_fallback = True
    mesh = sharding.make_mesh(axes)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    warning = capsys.readouterr().err
    assert "WARNING" in warning and "ignoring the topology" in warning


class FakeDevice:
    """What mesh_utils reads from a device: id, platform, kind, process and slice."""

    platform = device_kind = "cpu"

    def __init__(self, id, slice_index, process_index=0):
        self.id, self.slice_index, self.process_index = id, slice_index, process_index

    def __repr__(self):
        return f"D{self.id}/s{self.slice_index}"


def test_multi_slice_gets_a_hybrid_mesh():
    # Listed with the slices interleaved, as a multi-slice device list may come: a plain reshape
    # would put both slices inside every data-parallel group and the tensor axis.
    devices = [FakeDevice(i, slice_index=i % 2) for i in range(8)]
    axes = sharding.default_mesh_config()
    axes.data, axes.fsdp, axes.tensor = 2, 2, 2
    grid = sharding.device_grid(axes, devices)
    slices = np.vectorize(lambda d: d.slice_index)(grid)
    # data crosses the slices (DCN); fsdp and tensor stay inside one slice (ICI).
    np.testing.assert_array_equal(slices[0], 0)
    np.testing.assert_array_equal(slices[1], 1)
    axes.dcn_data, axes.dcn_fsdp = 1, 2
    slices = np.vectorize(lambda d: d.slice_index)(sharding.device_grid(axes, devices))
    np.testing.assert_array_equal(slices[:, 0], 0)
    np.testing.assert_array_equal(slices[:, 1], 1)
    axes.dcn_data, axes.dcn_fsdp = 2, 2
    with pytest.raises(UserError, match="must equal the 2 slices"):
        sharding.device_grid(axes, devices)
    axes.data, axes.fsdp, axes.tensor, axes.dcn_data, axes.dcn_fsdp = 1, 1, 8, -1, 1
    with pytest.raises(UserError, match="mesh.data 1 is not a multiple of mesh.dcn_data 2"):
        sharding.device_grid(axes, devices)
    # One slice (no slice_index, e.g. CPU and GPU devices): the DCN keys are ignored.
    assert sharding.num_slices(jax.devices()) == 1


def test_blockwise_and_windowed_attention_train_alike_on_a_mesh():
    """The memory-linear kernels (global blockwise, sliding window) under data, fsdp and tensor
    sharding: the same losses as on one device."""
    model = dict(
        attention_implementation="blockwise",
        local_attention_window=8,
        global_attn_every_n_layers=2,
        attention_probs_dropout_prob=0.0,
    )
    one, _ = run_losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], steps=3, **model)
    many, _ = run_losses(dict(data=2, fsdp=2, tensor=2), steps=3, **model)
    assert np.isfinite(one).all() and one.std() > 0
    np.testing.assert_allclose(many, one, rtol=1e-5)


# ModernBERT's options: rotary, GeGLU, pre-LN with embedding norm, no biases, local windows.
MODERN = dict(
    position_embedding_type="rope",
    type_vocab_size=0,
    pre_layer_norm=True,
    ffn_type="geglu",
    use_bias=False,
    local_attention_window=8,
    global_attn_every_n_layers=2,
    pooler="cls_head",
)


def test_modern_encoder_on_a_mesh_matches_single_device():
    single, _ = run_losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], **MODERN)
    losses, state = run_losses(dict(data=2, fsdp=2, tensor=2), **MODERN)
    np.testing.assert_allclose(losses, single, rtol=1e-5)
    assert losses[-1] < losses[0]
    layer = state.params["bert"]["encoder"]["layer_1"]
    for name, axes in [("intermediate", ("fsdp", "tensor")), ("gate", ("fsdp", "tensor")),
                       ("output", ("tensor", "fsdp"))]:  # fmt: skip
        assert tuple(layer[name]["dense"]["kernel"].sharding.spec) == axes
        assert "bias" not in layer[name]["dense"]
