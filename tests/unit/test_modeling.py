"""BertConfig validation and presets, the parameter tree with its logical axes, numerics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from bert_jax.data import packing
from bert_jax.errors import UserError
from bert_jax.model.modeling import (
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertSelfAttention,
    gather_positions,
    neighbourhood,
    segment_positions,
)

B, T, P = 2, 16, 4
SMALL = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=T,
)


def make_inputs(config: BertConfig, seed: int = 0):
    """Random ids, both token types, and padding at the end of the second row."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, config.vocab_size, (B, T), dtype=np.int32)
    token_type_ids = np.zeros((B, T), np.int32)
    token_type_ids[:, T // 2 :] = 1
    attention_mask = np.ones((B, T), np.int32)
    attention_mask[1, T - 5 :] = 0
    positions = np.stack([rng.choice(T - 5, P, replace=False) for _ in range(B)]).astype(np.int32)
    return input_ids, token_type_ids, attention_mask, positions


def init_pretraining(config: BertConfig, seed: int = 0) -> dict:
    ids, types, mask, positions = make_inputs(config)
    variables = BertForPreTraining(config).init(
        jax.random.key(seed), ids, types, mask, masked_lm_positions=positions
    )
    return nn.meta.unbox(variables["params"])


def num_elements(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# -- BertConfig -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=130, num_attention_heads=4), "not divisible by num_attention_heads"),
        (dict(hidden_act="gelu_newest"), "hidden_act 'gelu_newest' is not one of"),
        (dict(dtype="float33"), "dtype 'float33' is not a dtype name"),
        (dict(param_dtype="bf17"), "param_dtype 'bf17' is not a dtype name"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob must be in [0, 1)"),
        (dict(remat_policy="some"), "remat_policy 'some' is not one of"),
    ],
)
def test_config_rejects_invalid_values(overrides, message):
    with pytest.raises(UserError, match="invalid BertConfig") as error:
        BertConfig(**overrides)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_config_reports_every_problem_at_once():
    with pytest.raises(UserError) as error:
        BertConfig(hidden_act="nope", dtype="nope")
    assert "hidden_act" in str(error.value) and "dtype 'nope'" in str(error.value)


@pytest.mark.parametrize(
    "name, layers, hidden, heads",
    [
        ("tiny", 2, 128, 2),
        ("mini", 4, 256, 4),
        ("small", 4, 512, 8),
        ("medium", 8, 512, 8),
        ("base", 12, 768, 12),
        ("large", 24, 1024, 16),
    ],
)
def test_presets_have_released_sizes(name, layers, hidden, heads):
    config = BertConfig.preset(name)
    assert config.num_hidden_layers == layers
    assert config.hidden_size == hidden
    assert config.num_attention_heads == heads
    assert config.intermediate_size == 4 * hidden
    assert config.head_dim == 64
    assert config.vocab_size == 30522


def test_preset_overrides_and_unknown_name():
    config = BertConfig.preset("base", vocab_size=100, dtype="bfloat16")
    assert (config.vocab_size, config.dtype, config.hidden_size) == (100, "bfloat16", 768)
    with pytest.raises(UserError, match="unknown BERT preset 'huge'"):
        BertConfig.preset("huge")


def test_base_and_large_parameter_counts_match_the_paper():
    # Devlin et al. report 110M and 340M; the exact counts of the released encoders follow.
    assert BertConfig.preset("base").num_parameters(include_heads=False) == 109_482_240
    assert BertConfig.preset("large").num_parameters(include_heads=False) == 335_141_888


def test_config_dict_round_trip_ignores_unknown_keys():
    config = BertConfig(**SMALL, hidden_act="relu")
    values = dict(config.to_dict(), model_type="bert", architectures=["BertModel"])
    assert BertConfig.from_dict(values) == config


# -- parameter tree ---------------------------------------------------------------------------


def expected_tiny_tree() -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """'path' -> (shape, logical axes) of BertForPreTraining at the 'tiny' preset."""
    v, h, f, n_pos = 30592, 128, 512, 512  # the 30522-token vocabulary padded to 239 x 128
    norm = lambda p: {f"{p}/norm/scale": ((h,), ("embed",)), f"{p}/norm/bias": ((h,), ("embed",))}
    dense = lambda p, shape, axes: {
        f"{p}/dense/kernel": (shape, axes),
        f"{p}/dense/bias": ((shape[1],), (axes[1],)),
    }
    tree = {
        "bert/embeddings/word_embeddings/embedding": ((v, h), ("vocab", "embed")),
        "bert/embeddings/position_embeddings/embedding": ((n_pos, h), ("length", "embed")),
        "bert/embeddings/token_type_embeddings/embedding": ((2, h), ("type_vocab", "embed")),
        **norm("bert/embeddings/LayerNorm"),
        **dense("bert/pooler", (h, h), ("embed", "embed_out")),
        **dense("mlm_transform", (h, h), ("embed", "embed_out")),
        **norm("mlm_layer_norm"),
        "mlm_output_bias": ((v,), ("vocab",)),
        **dense("nsp", (h, 2), ("embed", "classes")),
    }
    for i in range(2):
        layer = f"bert/encoder/layer_{i}"
        for proj in ("query", "key", "value"):
            tree |= dense(f"{layer}/attention/{proj}", (h, h), ("embed", "heads"))
        tree |= dense(f"{layer}/attention/output", (h, h), ("heads", "embed"))
        tree |= dense(f"{layer}/intermediate", (h, f), ("embed", "mlp"))
        tree |= dense(f"{layer}/output", (f, h), ("mlp", "embed"))
        tree |= norm(f"{layer}/attention_layer_norm") | norm(f"{layer}/output_layer_norm")
    return tree


def test_tiny_param_tree_shapes_and_logical_axes():
    config = BertConfig.preset("tiny")
    ids = jnp.zeros((1, 8), jnp.int32)
    model = BertForPreTraining(config)
    boxed = jax.eval_shape(
        lambda rng: model.init(rng, ids, masked_lm_positions=ids[:, :2]), jax.random.key(0)
    )["params"]
    shapes = traverse_util.flatten_dict(nn.meta.unbox(boxed), sep="/")
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
    found = {k: (tuple(shapes[k].shape), tuple(specs[k])) for k in shapes}
    expected = expected_tiny_tree()
    assert sorted(found) == sorted(expected)
    for path, (shape, axes) in expected.items():
        assert found[path] == (shape, axes), path
    assert all(x.dtype == jnp.float32 for x in shapes.values())
    padding = (config.padded_vocab_size - config.vocab_size) * (config.hidden_size + 1)
    assert sum(int(np.prod(s)) for s, _ in expected.values()) == config.num_parameters() + padding


MODERN_VARIANTS = {
    "post_ln": {},
    "pre_ln_old": dict(pre_layer_norm=True, embedding_norm=False),
    "pre_ln_embedding_norm": dict(pre_layer_norm=True),
    "modernbert": dict(
        pre_layer_norm=True,
        position_embedding_type="rope",
        type_vocab_size=0,
        ffn_type="geglu",
        use_bias=False,
        local_attention_window=4,
        global_attn_every_n_layers=2,
        pooler="mean_head",
    ),
    "swiglu_rmsnorm": dict(ffn_type="swiglu", norm_type="rmsnorm", pooler="cls_head"),
}


@pytest.mark.parametrize("variant", sorted(MODERN_VARIANTS))
def test_num_parameters_matches_the_real_tree(variant):
    config = BertConfig(**SMALL, **MODERN_VARIANTS[variant])
    params = init_pretraining(config)
    extra_rows = config.padded_vocab_size - config.vocab_size  # 97 -> 128
    assert extra_rows == 31
    h = config.hidden_size
    assert num_elements(params) == config.num_parameters() + extra_rows * (h + 1)
    encoder = config.num_parameters(include_heads=False)
    assert num_elements(params["bert"]) == encoder + extra_rows * h


# -- numerics ---------------------------------------------------------------------------------


def test_sparse_mlm_head_equals_dense_head_gathered():
    config = BertConfig(**SMALL)
    params = init_pretraining(config)
    ids, types, mask, positions = make_inputs(config)
    model = BertForPreTraining(config)
    dense = model.apply({"params": params}, ids, types, mask)
    sparse = model.apply({"params": params}, ids, types, mask, masked_lm_positions=positions)
    assert dense.mlm_logits.shape == (B, T, config.vocab_size)
    assert sparse.mlm_logits.shape == (B, P, config.vocab_size)
    expected = np.take_along_axis(np.asarray(dense.mlm_logits), positions[:, :, None], axis=1)
    np.testing.assert_allclose(sparse.mlm_logits, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sparse.nsp_logits, dense.nsp_logits, atol=1e-6)
    assert sparse.nsp_logits.shape == (B, 2)
    assert sparse.pooled_output.shape == (B, config.hidden_size)


def test_gather_positions():
    sequence = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    positions = jnp.array([[4, 0], [1, 1]])
    gathered = gather_positions(sequence, positions)
    np.testing.assert_array_equal(gathered[0], sequence[0, jnp.array([4, 0])])
    np.testing.assert_array_equal(gathered[1], sequence[1, jnp.array([1, 1])])


def test_padding_is_not_attended():
    config = BertConfig(**SMALL)
    params = init_pretraining(config)
    ids, types, mask, _ = make_inputs(config)
    model = BertModel(config)
    changed = ids.copy()
    changed[1, mask[1] == 0] = (changed[1, mask[1] == 0] + 1) % config.vocab_size
    out, pooled = model.apply({"params": params["bert"]}, ids, types, mask)
    out2, pooled2 = model.apply({"params": params["bert"]}, changed, types, mask)
    real = mask[1] == 1
    np.testing.assert_allclose(out2[1, real], out[1, real], atol=1e-6)
    np.testing.assert_allclose(pooled2, pooled, atol=1e-6)
    assert np.abs(np.asarray(out2[1, ~real] - out[1, ~real])).max() > 1e-3
    # An all-padding row (a filler example in an eval batch) must stay finite, not NaN.
    empty = np.zeros_like(mask)
    for deterministic in (True, False):
        out3 = BertForPreTraining(config.replace(attention_probs_dropout_prob=0.5)).apply(
            {"params": params},
            ids,
            types,
            empty,
            deterministic=deterministic,
            rngs={"dropout": jax.random.key(0)},
        )
        assert np.isfinite(np.asarray(out3.mlm_logits)).all()
        assert np.isfinite(np.asarray(out3.nsp_logits)).all()


def test_too_long_sequence_is_a_user_error():
    config = BertConfig(**SMALL)
    params = init_pretraining(config)
    ids = np.zeros((1, T + 1), np.int32)
    with pytest.raises(UserError, match="exceeds max_position_embeddings 16"):
        BertModel(config).apply({"params": params["bert"]}, ids)


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
    config = BertConfig(**SMALL)
    low = config.replace(dtype="bfloat16")
    ids, types, mask, positions = make_inputs(config)
    low_params = init_pretraining(low)
    assert {x.dtype for x in jax.tree.leaves(low_params)} == {jnp.dtype(jnp.float32)}
    full = BertForPreTraining(config).apply(
        {"params": low_params}, ids, types, mask, masked_lm_positions=positions
    )
    half = BertForPreTraining(low).apply(
        {"params": low_params}, ids, types, mask, masked_lm_positions=positions
    )
    assert half.sequence_output.dtype == jnp.bfloat16
    assert half.mlm_logits.dtype == jnp.float32 and half.nsp_logits.dtype == jnp.float32
    # Post-LN activations are O(1); bfloat16 keeps about 3 significant digits.
    seq_err = np.abs(np.asarray(half.sequence_output, np.float32) - full.sequence_output).max()
    mlm_err = np.abs(np.asarray(half.mlm_logits) - full.mlm_logits).max()
    assert seq_err < 0.1, seq_err
    assert mlm_err < 0.1 * max(1.0, float(np.abs(full.mlm_logits).max())), mlm_err
    assert seq_err > 0.0  # really computed in bfloat16


def test_pre_layer_norm_model_runs_and_differs():
    post = BertConfig(**SMALL)
    pre = post.replace(pre_layer_norm=True, embedding_norm=False)
    ids, types, mask, positions = make_inputs(post)
    params = init_pretraining(pre)
    assert "final_layer_norm" in params["bert"]["encoder"]
    assert "LayerNorm" not in params["bert"]["embeddings"]
    assert "attention_layer_norm" in params["bert"]["encoder"]["layer_0"]
    # With embedding_norm (ModernBERT), the embeddings are normalised and layer 0 has no norm.
    modern = init_pretraining(pre.replace(embedding_norm=True))
    assert "LayerNorm" in modern["bert"]["embeddings"]
    assert "attention_layer_norm" not in modern["bert"]["encoder"]["layer_0"]
    assert "attention_layer_norm" in modern["bert"]["encoder"]["layer_1"]
    out = BertForPreTraining(pre).apply(
        {"params": params}, ids, types, mask, masked_lm_positions=positions
    )
    assert out.mlm_logits.shape == (B, P, post.vocab_size)
    assert np.isfinite(np.asarray(out.mlm_logits)).all()
    # The final LayerNorm normalises each position.
    sequence = np.asarray(out.sequence_output)
    np.testing.assert_allclose(sequence.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(sequence.std(-1), 1.0, atol=1e-3)


def pretraining_loss(config: BertConfig, params, dropout_rng):
    ids, types, mask, positions = make_inputs(config)
    out = BertForPreTraining(config).apply(
        {"params": params},
        ids,
        types,
        mask,
        masked_lm_positions=positions,
        deterministic=False,
        rngs={"dropout": dropout_rng},
    )
    labels = jnp.asarray(ids)[jnp.arange(B)[:, None], positions]
    log_probs = jax.nn.log_softmax(out.mlm_logits)
    mlm = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1).mean()
    return mlm + jax.nn.log_softmax(out.nsp_logits)[:, 0].mean()


def test_remat_gives_identical_grads():
    config = BertConfig(**SMALL)
    params = init_pretraining(config)
    rng = jax.random.key(3)
    grad = lambda cfg: jax.jit(jax.grad(lambda p: pretraining_loss(cfg, p, rng)))(params)
    plain = grad(config)
    assert num_elements(plain) == num_elements(params)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(plain)) > 1e-3
    for policy in ("full", "dots"):
        remat = grad(config.replace(remat_policy=policy))
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(plain), jax.tree.leaves(remat), strict=True
        ):
            np.testing.assert_allclose(
                a, b, atol=1e-6, rtol=1e-5, err_msg=f"{policy}: {jax.tree_util.keystr(path)}"
            )


def test_attention_dropout_path_matches_fused_path():
    config = BertConfig(**SMALL)
    ids, _, mask, _ = make_inputs(config)
    x = jax.random.normal(jax.random.key(1), (B, T, config.hidden_size))
    key_mask = jnp.asarray(mask > 0)
    attention = BertSelfAttention(config)
    params = attention.init(jax.random.key(2), x, key_mask, True)
    fused = attention.apply(params, x, key_mask, True)

    # A rate so small that nothing is dropped still routes through the explicit softmax path.
    explicit_config = config.replace(attention_probs_dropout_prob=1e-9)
    explicit = BertSelfAttention(explicit_config).apply(
        params, x, key_mask, False, rngs={"dropout": jax.random.key(0)}
    )
    np.testing.assert_allclose(explicit, fused, atol=1e-5, rtol=1e-5)

    # With BERT's 0.1 the probabilities really are dropped, reproducibly per rng.
    apply = lambda seed: BertSelfAttention(config).apply(
        params, x, key_mask, False, rngs={"dropout": jax.random.key(seed)}
    )
    assert np.abs(np.asarray(apply(0) - fused)).max() > 1e-3
    np.testing.assert_array_equal(apply(0), apply(0))
    assert np.abs(np.asarray(apply(0) - apply(1))).max() > 1e-3


def test_task_heads_output_shapes_and_share_the_encoder_tree():
    config = BertConfig(**SMALL)
    ids, types, mask, _ = make_inputs(config)
    encoder_tree = jax.tree.structure(init_pretraining(config)["bert"])
    heads = {
        "classify": (BertForSequenceClassification(config, num_labels=3), "classifier"),
        "regress": (BertForSequenceClassification(config, num_labels=1), "classifier"),
        "tokens": (BertForTokenClassification(config, num_labels=5), "classifier"),
        "qa": (BertForQuestionAnswering(config), "qa_outputs"),
    }
    outputs = {}
    for name, (model, head) in heads.items():
        params = nn.meta.unbox(model.init(jax.random.key(0), ids, types, mask)["params"])
        assert set(params) == {"bert", head}
        assert jax.tree.structure(params["bert"]) == encoder_tree
        outputs[name] = model.apply({"params": params}, ids, types, mask)
    assert outputs["classify"].shape == (B, 3)
    assert outputs["regress"].shape == (B, 1)
    assert outputs["tokens"].shape == (B, T, 5)
    start, end = outputs["qa"]
    assert start.shape == (B, T) and end.shape == (B, T)
    assert start.dtype == jnp.float32
    assert not np.allclose(start, end)


def _alone_and_packed(config: BertConfig, seed: int = 0, row_length: int = 24):
    """Random sequences one per row, and the same sequences packed several per row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 11, 9)
    n = len(lengths)
    ids = np.zeros((n, row_length), np.int32)
    types = np.zeros((n, row_length), np.int32)
    masked = np.zeros((n, 2), np.int32)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(1, config.vocab_size, length)
        types[i, length // 2 : length] = 1
        masked[i] = rng.choice(length, 2, replace=False)
    real = (np.arange(row_length) < lengths[:, None]).astype(np.int32)
    alone = dict(input_ids=ids, token_type_ids=types, attention_mask=real)
    slots = packing.pack(lengths, row_length, max_per_row=4, order=rng.permutation(n))
    assert len(slots) < n and (slots >= 0).sum(1).max() > 1  # really packed
    rows = packing.packed_rows(dict(input_ids=ids, token_type_ids=types), lengths, slots,
                               row_length)  # fmt: skip
    # Each sequence's masked positions, offset into its row: [R, S * 2].
    starts = rows["cls_positions"]
    row_masked = (masked[np.maximum(slots, 0)] + starts[..., None]).reshape(len(slots), -1)
    return lengths, alone, masked, slots, rows, row_masked


@pytest.mark.parametrize("pre_layer_norm", [False, True])
def test_packed_sequences_equal_each_alone(pre_layer_norm):
    config = BertConfig(**dict(SMALL, max_position_embeddings=24), pre_layer_norm=pre_layer_norm)
    lengths, alone, masked, slots, rows, row_masked = _alone_and_packed(config)
    packed = {k: rows[k] for k in ("segment_ids", "cls_positions")}
    params = init_pretraining(config)
    model = BertForPreTraining(config)
    one = model.apply({"params": params}, **alone, masked_lm_positions=masked)
    many = model.apply(
        {"params": params}, rows["input_ids"], rows["token_type_ids"],
        masked_lm_positions=row_masked, **packed,
    )  # fmt: skip
    real, per_row = slots >= 0, slots.shape[1]
    index = slots[real]  # the sequence in each used slot
    tolerance = dict(atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(many.pooled_output[real], one.pooled_output[index], **tolerance)
    np.testing.assert_allclose(many.nsp_logits[real], one.nsp_logits[index], **tolerance)
    mlm = np.asarray(many.mlm_logits).reshape(len(slots), per_row, 2, -1)
    np.testing.assert_allclose(mlm[real], one.mlm_logits[index], **tolerance)
    unpacked = np.zeros_like(np.asarray(one.sequence_output))
    packing.unpack_tokens(many.sequence_output, lengths, slots, unpacked)
    is_real = alone["attention_mask"] == 1
    np.testing.assert_allclose(unpacked[is_real], one.sequence_output[is_real], **tolerance)

    heads = (
        BertForSequenceClassification(config, 3),
        BertForTokenClassification(config, 5),
        BertForTokenClassification(config, 5, window=2),  # neighbours stay within a sequence
    )
    for head in heads:
        head_params = nn.meta.unbox(head.init(jax.random.key(1), alone["input_ids"])["params"])
        head_params["bert"] = params["bert"]
        one = np.asarray(head.apply({"params": head_params}, **alone))
        many = np.asarray(
            head.apply({"params": head_params}, rows["input_ids"], rows["token_type_ids"],
                       **(packed if isinstance(head, BertForSequenceClassification)
                          else {"segment_ids": rows["segment_ids"]}))
        )  # fmt: skip
        if isinstance(head, BertForSequenceClassification):
            assert many.shape == (*slots.shape, 3)
            np.testing.assert_allclose(many[real], one[index], **tolerance)
        else:
            tokens = np.zeros_like(one)
            packing.unpack_tokens(many, lengths, slots, tokens)
            np.testing.assert_allclose(tokens[is_real], one[is_real], **tolerance)


def test_neighbourhood_stops_at_its_sequence():
    """Each position's window holds its own sequence's vectors only: zeros past a packed
    sequence's ends, in padding, and outside the row."""
    x = jnp.arange(1.0, 7.0)[None, :, None]  # [1, 6, 1]: values 1..6
    segments = jnp.array([[1, 1, 1, 2, 2, 0]])  # two packed sequences and a padding slot
    window = np.asarray(neighbourhood(x, segments, 1))[0]  # [6, 3]: left, self, right
    np.testing.assert_array_equal(
        window, [[0, 1, 2], [1, 2, 3], [2, 3, 0], [0, 4, 5], [4, 5, 0], [0, 6, 0]]
    )


def test_the_window_head_is_a_convolution_over_the_dropped_last_layer():
    """With dropout on, the classifier's input at t holds the same dropped vectors as the
    windows of t's neighbours: one mask per position, not one per copy of it."""
    config = BertConfig(**{**SMALL, "hidden_dropout_prob": 0.5})
    head = BertForTokenClassification(config, 3, window=1)
    input_ids, token_type_ids, attention_mask, _ = make_inputs(config)
    params = head.init(jax.random.key(0), input_ids)["params"]
    seen = []

    def capture(next_fun, args, kwargs, context):
        if context.module.name == "classifier" and context.method_name == "__call__":
            seen.append(np.asarray(args[0]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
        head.apply({"params": params}, input_ids, token_type_ids, attention_mask,
                   deterministic=False, rngs={"dropout": jax.random.key(1)})  # fmt: skip
    left, centre, right = np.split(seen[0], 3, axis=-1)  # [B, T, H] each
    assert (centre == 0).mean() > 0.3  # dropout is on
    real = np.asarray(attention_mask, bool)
    both = real[:, 1:] & real[:, :-1]  # t and t - 1 in the same sentence
    np.testing.assert_array_equal(left[:, 1:][both], centre[:, :-1][both])
    np.testing.assert_array_equal(right[:, :-1][both], centre[:, 1:][both])


def test_segment_positions_restart_per_sequence():
    segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        segment_positions(segments), [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]
    )


@pytest.mark.parametrize("variant", ["post_ln", "modernbert_local_last"])
def test_pooled_only_equals_the_full_last_layer(variant):
    """Also with rotary positions and a local-window last layer (its mask rows and query
    positions gathered), on packed rows with a [CLS] per sequence."""
    changes = dict(MODERN_VARIANTS["modernbert"], pooler="cls_head", global_attn_every_n_layers=2)
    config = BertConfig(**SMALL, **(changes if variant != "post_ln" else {}))
    assert variant == "post_ln" or config.layer_window(config.num_hidden_layers - 1) > 0
    ids, types, mask, _ = make_inputs(config)
    params = init_pretraining(config)["bert"]
    sequence, pooled = BertModel(config).apply({"params": params}, ids, types, mask)
    none, fast = BertModel(config).apply({"params": params}, ids, types, mask, pooled_only=True)
    assert none is None and fast.shape == pooled.shape
    np.testing.assert_allclose(fast, pooled, atol=1e-6, rtol=1e-6)
    segments = np.repeat(np.arange(1, ids.shape[1] // 6 + 2), 6)[None, : ids.shape[1]]
    segments = np.broadcast_to(segments, ids.shape)
    cls = np.broadcast_to(
        np.arange(0, ids.shape[1], 6)[None], (ids.shape[0], -(-ids.shape[1] // 6))
    )
    packed = dict(segment_ids=segments, cls_positions=cls)
    _, full = BertModel(config).apply({"params": params}, ids, types, **packed)
    _, fast = BertModel(config).apply({"params": params}, ids, types, pooled_only=True, **packed)
    np.testing.assert_allclose(fast, full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ffn_type", "glu", "ffn_type 'glu' is not one of"),
        ("position_embedding_type", "relative_key", "position_embedding_type 'relative_key'"),
        ("local_attention_window", -2, "local_attention_window must be an integer >= 0"),
        ("global_attn_every_n_layers", 0, "global_attn_every_n_layers must be an integer >= 1"),
        ("rope_theta", "big", "rope_theta must be a number above 1"),
        ("use_bias", "no", "use_bias must be true or false"),
        ("type_vocab_size", -1, "type_vocab_size must be a positive integer"),
    ],
)
def test_modern_fields_are_checked_in_one_line(field, value, message):
    with pytest.raises(UserError, match=message) as error:
        BertConfig.from_dict({**SMALL, field: value}, source="config.json")
    assert "\n" not in str(error.value)


def test_a_pre_ln_config_from_before_embedding_norm_keeps_its_parameter_tree():
    """A checkpoint's config written before embedding_norm existed (pre-LN, no such key) is the
    earlier pre-LN model: no embedding norm, a layer-0 attention norm; its parameters restore."""
    old = {**BertConfig.preset("tiny", vocab_size=64).to_dict(), "pre_layer_norm": True}
    del old["embedding_norm"]
    config = BertConfig.from_dict(old)
    assert config.embedding_norm is False
    params = BertModel(config).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    assert "attention_layer_norm" in params["encoder"]["layer_0"]
    assert "LayerNorm" not in params["embeddings"]
    assert BertConfig.from_dict({**old, "embedding_norm": True}).embedding_norm is True
