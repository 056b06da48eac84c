"""Hugging Face ModernBERT interop: the modern options of BertConfig against transformers'
ModernBertModel / ForMaskedLM / ForSequenceClassification (torch, eager attention, float32),
with padding, sequences longer than the local window, and packed rows; export round trips."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bert_jax.convert import modernbert  # noqa: E402
from bert_jax.convert.hf import load_hf_checkpoint, save_hf_checkpoint, save_hf_encoder  # noqa: E402
from bert_jax.errors import UserError  # noqa: E402
from bert_jax.model.modeling import (  # noqa: E402
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
)

TOLERANCE = 1e-4
T = 24  # longer than every local window below

# Sizes, windows, rotary bases, activations, biases and poolings differ so a mix-up shows.
MODERN_CONFIGS = {
    "geglu_window8": dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        local_attention=8,
        global_attn_every_n_layers=3,
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
    ),
    "swiglu_biases_mean": dict(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=40,
        hidden_activation="silu",
        local_attention=6,
        global_attn_every_n_layers=2,
        attention_bias=True,
        mlp_bias=True,
        norm_bias=True,
        classifier_bias=True,
        classifier_pooling="mean",
        norm_eps=1e-6,
        vocab_size=211,
    ),
    "gelu_tanh_all_global": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=96,
        hidden_activation="gelu_pytorch_tanh",
        classifier_activation="gelu_pytorch_tanh",
        global_attn_every_n_layers=1,
    ),
}


def random_modern_model(model_class, seed: int = 0, **overrides):
    """A transformers ModernBERT model whose every parameter (norms and biases too) is random."""
    values = dict(
        vocab_size=101,
        max_position_embeddings=64,
        pad_token_id=0,
        attn_implementation="eager",
        reference_compile=False,
    )
    values.update(overrides)
    torch.manual_seed(seed)
    model = model_class(transformers.ModernBertConfig(**values)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def random_batch(vocab_size: int, seed: int = 0):
    """ids [3, T], the last two rows padded (to 17 and 9 real tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, size=(3, T))
    mask = np.ones((3, T), np.int64)
    mask[1, 17:] = 0
    mask[2, 9:] = 0
    return ids * mask, mask


def torch_logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


def imported(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path)
    return load_hf_checkpoint(tmp_path, verbose=False)


@pytest.mark.parametrize("name", sorted(MODERN_CONFIGS))
def test_masked_lm_matches_transformers(tmp_path, name):
    hf_model = random_modern_model(transformers.ModernBertForMaskedLM, **MODERN_CONFIGS[name])
    config, params = imported(tmp_path, hf_model)
    assert config.position_embedding_type == "rope" and config.type_vocab_size == 0
    ids, mask = random_batch(config.vocab_size)
    expected = torch_logits(hf_model, ids, mask)
    out = BertForPreTraining(config).apply({"params": params}, ids, None, mask)
    ours = np.asarray(out.mlm_logits)
    real = mask.astype(bool)
    diff = np.abs(ours[real] - expected[real]).max()
    print(f"{name}: max |ours - transformers| MLM logits {diff:.2e}")
    assert diff < TOLERANCE


def test_packed_rows_equal_each_sequence_alone_in_transformers(tmp_path):
    """Two sequences packed in one row (positions restarting, windows not crossing) give the
    logits transformers gives each alone."""
    hf_model = random_modern_model(
        transformers.ModernBertForMaskedLM, **MODERN_CONFIGS["geglu_window8"]
    )
    config, params = imported(tmp_path, hf_model)
    rng = np.random.default_rng(3)
    lengths = (13, 9)
    sequences = [rng.integers(1, config.vocab_size, size=n) for n in lengths]
    row = np.zeros((1, T), np.int64)
    segments = np.zeros((1, T), np.int32)
    start = 0
    for s, seq in enumerate(sequences):
        row[0, start : start + len(seq)] = seq
        segments[0, start : start + len(seq)] = s + 1
        start += len(seq)
    out = BertForPreTraining(config).apply({"params": params}, row, segment_ids=segments)
    ours = np.asarray(out.mlm_logits)[0]
    start = 0
    for seq in sequences:
        alone = torch_logits(hf_model, seq[None], np.ones((1, len(seq)), np.int64))[0]
        diff = np.abs(ours[start : start + len(seq)] - alone).max()
        assert diff < TOLERANCE, diff
        start += len(seq)


@pytest.mark.parametrize("name", ["geglu_window8", "swiglu_biases_mean"])
def test_encoder_matches_transformers_model(tmp_path, name):
    hf_model = random_modern_model(transformers.ModernBertModel, seed=1, **MODERN_CONFIGS[name])
    config, params = imported(tmp_path, hf_model)
    ids, mask = random_batch(config.vocab_size, seed=1)
    with torch.no_grad():
        expected = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    expected = expected.last_hidden_state.numpy()
    sequence, _ = BertModel(config).apply({"params": params["bert"]}, ids, None, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(sequence)[real] - expected[real]).max() < TOLERANCE


@pytest.mark.parametrize("name", ["geglu_window8", "swiglu_biases_mean"])
def test_sequence_classifier_matches_transformers(tmp_path, name):
    """ModernBertForSequenceClassification (cls or mean pooling, head, classifier) ->
    BertForSequenceClassification with pooler cls_head / mean_head; and back."""
    hf_model = random_modern_model(
        transformers.ModernBertForSequenceClassification, num_labels=3, **MODERN_CONFIGS[name]
    )
    hf_model.save_pretrained(tmp_path / "hf")
    config, params = modernbert.load_classifier(tmp_path / "hf", verbose=False)
    ids, mask = random_batch(config.vocab_size, seed=2)
    expected = torch_logits(hf_model, ids, mask)
    model = BertForSequenceClassification(config, 3)
    ours = np.asarray(model.apply({"params": params}, ids, None, mask))
    assert ours.shape == (3, 3)
    assert np.abs(ours - expected).max() < TOLERANCE
    # and back: transformers reads the export to the same logits
    modernbert.save_classifier(config, params, tmp_path / "back")
    back = transformers.ModernBertForSequenceClassification.from_pretrained(
        tmp_path / "back", attn_implementation="eager", reference_compile=False
    ).eval()
    assert np.abs(torch_logits(back, ids, mask) - expected).max() < TOLERANCE


def test_export_round_trip_and_transformers_reads_it(tmp_path):
    hf_model = random_modern_model(
        transformers.ModernBertForMaskedLM, **MODERN_CONFIGS["swiglu_biases_mean"]
    )
    config, params = imported(tmp_path / "in", hf_model)
    save_hf_checkpoint(config, params, tmp_path / "out")
    values = json.loads((tmp_path / "out" / "config.json").read_text())
    assert values["model_type"] == "modernbert"
    again_config, again = load_hf_checkpoint(tmp_path / "out", verbose=False)
    assert again_config == config
    flat, flat_again = traverse_util.flatten_dict(params), traverse_util.flatten_dict(again)
    assert flat.keys() == flat_again.keys()
    for key in flat:
        if key[0] != "nsp":  # ModernBERT has no NSP head: drawn fresh on both imports alike
            np.testing.assert_array_equal(flat[key], flat_again[key], err_msg=str(key))
    reloaded = transformers.ModernBertForMaskedLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager", reference_compile=False
    ).eval()
    ids, mask = random_batch(config.vocab_size)
    real = mask.astype(bool)
    diff = torch_logits(reloaded, ids, mask)[real] - torch_logits(hf_model, ids, mask)[real]
    assert np.abs(diff).max() < TOLERANCE
    # the encoder alone, as ModernBertModel
    save_hf_encoder(config, params["bert"], tmp_path / "encoder")
    encoder = transformers.ModernBertModel.from_pretrained(
        tmp_path / "encoder", attn_implementation="eager", reference_compile=False
    ).eval()
    with torch.no_grad():
        hidden = encoder(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    sequence, _ = BertModel(config).apply({"params": params["bert"]}, ids, None, mask)
    assert np.abs(hidden.last_hidden_state.numpy()[real] - np.asarray(sequence)[real]).max() < (
        TOLERANCE
    )


def test_what_has_no_equivalent_is_one_clear_error(tmp_path):
    bert_like = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    rope_mlp = bert_like.replace(position_embedding_type="rope", type_vocab_size=0)
    with pytest.raises(UserError, match="ffn_type='mlp'"):
        save_hf_checkpoint(rope_mlp.replace(pre_layer_norm=True), {}, tmp_path / "x")
    from bert_jax.convert.hf import encoder_mappings

    with pytest.raises(UserError, match="ffn_type='geglu'"):
        encoder_mappings(bert_like.replace(ffn_type="geglu"))
    hf_model = random_modern_model(
        transformers.ModernBertForMaskedLM,
        **dict(MODERN_CONFIGS["geglu_window8"], attention_bias=True),
    )
    hf_model.save_pretrained(tmp_path / "mixed")
    with pytest.raises(UserError, match="biases on for some layers only"):
        load_hf_checkpoint(tmp_path / "mixed", verbose=False)


def test_local_window_sees_exactly_half_the_window_each_side():
    """A local layer's query at i sees keys i - w/2 .. i + w/2: perturbing a token changes the
    outputs of a local layer (layer 1 of 2, every 2nd global) exactly within that reach."""
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        position_embedding_type="rope",
        type_vocab_size=0,
        pre_layer_norm=True,
        ffn_type="geglu",
        local_attention_window=6,
        global_attn_every_n_layers=2,
        pooler="cls_head",
    )
    from bert_jax.model.modeling import BertLayer

    layer = BertLayer(config, config.layer_window(1), 1)
    x = jax.random.normal(jax.random.key(0), (1, 20, 16))
    positions = jnp.arange(20)[None]
    segments = jnp.ones((1, 20), jnp.int32)
    params = layer.init(jax.random.key(1), x, segments, True, None, positions)
    base = layer.apply(params, x, segments, True, None, positions)
    moved = x.at[0, 10].add(jax.random.normal(jax.random.key(2), (16,)))
    moved = layer.apply(params, moved, segments, True, None, positions)
    changed = np.nonzero(np.abs(np.asarray(moved - base))[0].max(-1) > 1e-6)[0]
    assert changed.tolist() == [7, 8, 9, 10, 11, 12, 13]
