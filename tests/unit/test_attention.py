"""attend: the blockwise and local kernels against a materialised softmax (values, gradients),
fully masked queries, the dispatch, memory growth in T, and the model's per-layer windows."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.errors import UserError
from bert_jax.model import attention
from bert_jax.model.attention import attend
from bert_jax.model.modeling import BertConfig, BertModel


def reference_mask(segments, q_positions, window):
    """The rule of `attend`, element by element: [B, Tq, T] bool."""
    b, t = segments.shape
    mask = np.zeros((b, q_positions.shape[1], t), bool)
    for r, i, j in itertools.product(range(b), range(q_positions.shape[1]), range(t)):
        p = q_positions[r, i]
        qs, ks = segments[r, p], segments[r, j]
        mask[r, i, j] = (
            ks != 0 and (qs == ks or qs == 0) and (not window or abs(p - j) <= window // 2)
        )
    return mask


def reference(q, k, v, mask):
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
    logits = jnp.where(mask[:, None], logits, -1e30)
    return jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(logits, axis=-1), v)


def qkv(b, t, n=2, d=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (b, t, n, d), jnp.float32) for key in keys]


def example_segments(t):
    """Row 0: three packed sequences then padding; row 1: one sequence then padding."""
    segments = np.ones((2, t), np.int32)
    segments[0, t // 3 :] = 2
    segments[0, t // 2 :] = 3
    segments[0, t - 4 :] = 0
    segments[1, 2 * t // 3 :] = 0
    return segments


CASES = [  # T, window, query positions (None: every position), implementation
    (37, 0, None, "blockwise"),  # global, T not a multiple of the 16-blocks
    (37, 0, [[0, 12, 20, 36], [5, 0, 30, 1]], "blockwise"),
    (61, 7, None, "blockwise"),  # local, odd window
    (61, 8, None, None),  # local, even window, by "auto"
    (61, 10, [[0, 21, 40, 60], [3, 30, 39, 45]], None),  # windowed queries at positions
    (20, 64, None, None),  # a window larger than T: global
    (23, 0, None, None),  # short: jax.nn.dot_product_attention
]


@pytest.mark.parametrize("t, window, positions, implementation", CASES)
def test_attend_equals_the_materialised_softmax(monkeypatch, t, window, positions, implementation):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 16)
    monkeypatch.setattr(attention, "KEY_BLOCK", 16)
    monkeypatch.setattr(attention, "MIN_LOCAL_BLOCK", 8)
    q, k, v = qkv(2, t)
    segments = example_segments(t)
    if positions is None:
        q_positions = np.broadcast_to(np.arange(t), (2, t))
    else:
        q_positions = np.asarray(positions, np.int32)
        q = jnp.take_along_axis(q, q_positions[:, :, None, None], axis=1)
    mask = reference_mask(segments, q_positions, window)
    seen = mask.any(-1)  # queries with a key to attend
    assert seen.sum() > seen.size // 2
    weights = jax.random.normal(jax.random.key(9), q.shape) * seen[:, :, None, None]

    def ours(q, k, v):
        return attend(
            q, k, v, segment_ids=jnp.asarray(segments), window=window,
            implementation=implementation,
            query_positions=None if positions is None else jnp.asarray(q_positions),
        )  # fmt: skip

    def theirs(q, k, v):
        return reference(q, k, v, jnp.asarray(mask))

    ours, theirs = jax.jit(ours), jax.jit(theirs)
    got, want = ours(q, k, v), theirs(q, k, v)
    np.testing.assert_allclose(np.asarray(got)[seen], np.asarray(want)[seen], atol=1e-5)
    assert np.isfinite(np.asarray(got)).all()
    loss = lambda f: lambda *a: (f(*a) * weights).sum()  # noqa: E731
    grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
    want_grads = jax.jit(jax.grad(loss(theirs), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", grads, want_grads, strict=True):
        assert np.abs(np.asarray(b)).max() > 0.1
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("window", [0, 5])
def test_a_query_with_no_key_gets_zeros_and_no_gradient(monkeypatch, window):
    monkeypatch.setattr(attention, "QUERY_BLOCK", 8)
    monkeypatch.setattr(attention, "KEY_BLOCK", 8)
    t = 30
    q, k, v = qkv(2, t, seed=1)
    segments = np.ones((2, t), np.int32)
    segments[0] = 0  # an all-padding row
    segments[1, :10] = 0  # padding first: with a window, queries 0..7 see no real key
    segments = jnp.asarray(segments)

    def f(q, k, v):
        return attend(q, k, v, segment_ids=segments, window=window, implementation="blockwise")

    out = np.asarray(f(q, k, v))
    dq, dk, dv = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))(q, k, v)
    for x in (out, dq, dk, dv):
        assert np.isfinite(np.asarray(x)).all()
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(dq[0], 0)
    np.testing.assert_array_equal(dk[0], 0)
    np.testing.assert_array_equal(dv[0], 0)
    np.testing.assert_array_equal(dk[1, :10], 0)  # padding keys are never attended
    if window:
        np.testing.assert_array_equal(out[1, :8], 0)
        np.testing.assert_array_equal(dq[1, :8], 0)
    assert np.abs(out[1, 10:]).min() > 0 and np.abs(np.asarray(dq[1, 10:])).max() > 0.1


def _primitives(f, *args) -> set[str]:
    return {str(e.primitive) for e in jax.make_jaxpr(f)(*args).jaxpr.eqns}


def test_auto_takes_the_fused_kernel_when_short_and_the_blockwise_one_when_long_or_windowed():
    def kernel(t, window=0, implementation=None):
        q, k, v = qkv(1, t)
        f = lambda q, k, v: attend(  # noqa: E731
            q, k, v, segment_ids=jnp.ones((1, t), jnp.int32), window=window,
            implementation=implementation,
        )  # fmt: skip
        return _primitives(f, q, k, v)

    assert "custom_vjp_call" not in kernel(1024) and "scan" not in kernel(1024)
    assert "custom_vjp_call" in kernel(1025)  # the global blockwise kernel
    assert "scan" in kernel(64, window=8)  # the local one
    assert "custom_vjp_call" in kernel(64, implementation="blockwise")
    with pytest.raises(UserError, match="attention implementation 'flash' is not one of"):
        kernel(64, implementation="flash")
    with pytest.raises(UserError, match="attention window must be a non-negative integer"):
        kernel(64, window=-2)


def _temp_bytes(t, implementation, window=0) -> int:
    q, k, v = (jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32) for _ in range(3))
    segments = jax.ShapeDtypeStruct((1, t), jnp.int32)

    def loss(q, k, v, segments):
        out = attend(
            q, k, v, segment_ids=segments, window=window, implementation=implementation
        )  # fmt: skip
        return out.sum()

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return step.lower(q, k, v, segments).compile().memory_analysis().temp_size_in_bytes


def test_forward_backward_memory_grows_linearly_not_quadratically():
    """XLA's buffer assignment for forward + backward at T and 2 T: the blockwise kernels' temps
    grow 2x at most (linearly), the fused kernel's logits 4x."""
    short, long = 2048, 4096
    dense = [_temp_bytes(t, "xla") for t in (short, long)]
    blockwise = [_temp_bytes(t, "blockwise") for t in (short, long)]
    local = [_temp_bytes(t, "blockwise", 128) for t in (short, long)]
    assert dense[1] > 3.5 * dense[0], dense  # quadratic: 4x
    assert blockwise[1] < 2.2 * blockwise[0], blockwise  # linear: 2x at most
    assert local[1] < 2.2 * local[0], local
    assert blockwise[1] * 10 < dense[1] and local[1] * 10 < dense[1]


TINY = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=48,
    local_attention_window=6,
    global_attn_every_n_layers=3,
)


def test_model_layers_take_their_windows_through_either_kernel():
    config = BertConfig(**TINY)
    assert [config.layer_window(i) for i in range(4)] == [0, 6, 6, 0]
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (2, 48))
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    model = BertModel(config)
    params = model.init(jax.random.key(0), ids)["params"]

    def run(**changes):
        return BertModel(config.replace(**changes)).apply({"params": params}, ids, None, mask)

    blockwise, pooled = run(attention_implementation="blockwise")
    dense, dense_pooled = run(attention_implementation="xla")
    real = mask == 1
    np.testing.assert_allclose(np.asarray(blockwise)[real], np.asarray(dense)[real], atol=1e-5)
    np.testing.assert_allclose(pooled, dense_pooled, atol=1e-5)
    global_only, _ = run(local_attention_window=0)
    assert np.abs(np.asarray(global_only - dense)[real]).max() > 1e-3  # the windows count
    # The last layer at the pooled positions only, through the windowed query path.
    last_local = config.replace(global_attn_every_n_layers=2, attention_implementation="blockwise")
    full = BertModel(last_local).apply({"params": params}, ids, None, mask)[1]
    fast = BertModel(last_local).apply({"params": params}, ids, None, mask, pooled_only=True)[1]
    np.testing.assert_allclose(fast, full, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(local_attention_window=-1), "local_attention_window must be an integer >= 0"),
        (dict(global_attn_every_n_layers=0), "global_attn_every_n_layers must be an integer >= 1"),
    ],
)
def test_config_rejects_bad_windows(overrides, message):
    with pytest.raises(UserError, match=message):
        BertConfig(**overrides)


@pytest.mark.parametrize("window", [0, 6])
def test_bfloat16_operands_keep_float32_logits_and_accumulators(monkeypatch, window):
    """bfloat16 q, k, v: outputs and gradients within bfloat16 rounding of the float32 softmax
    of the same (rounded) operands."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 16)
    monkeypatch.setattr(attention, "KEY_BLOCK", 16)
    monkeypatch.setattr(attention, "MIN_LOCAL_BLOCK", 8)
    t = 40
    half = [x.astype(jnp.bfloat16) for x in qkv(1, t, seed=3)]
    segments = np.ones((1, t), np.int32)
    mask = jnp.asarray(reference_mask(segments, np.arange(t)[None], window))
    weights = jax.random.normal(jax.random.key(4), half[0].shape)

    def ours(q, k, v):
        return attend(
            q, k, v, segment_ids=jnp.asarray(segments), window=window, implementation="blockwise"
        )  # fmt: skip

    def theirs(q, k, v):
        return reference(q, k, v, mask)

    def grads(f, *args):
        loss = lambda *a: (f(*a).astype(jnp.float32) * weights).sum()  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)

    single = [x.astype(jnp.float32) for x in half]
    got, want = jax.jit(ours)(*half), jax.jit(theirs)(*single)
    assert got.dtype == jnp.bfloat16
    pairs = [(got, want), *zip(grads(ours, *half), grads(theirs, *single), strict=True)]
    for a, b in pairs:
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.abs(a - b).max() < 0.02 * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()
