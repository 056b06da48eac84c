"""google-research/bert TF1 checkpoints: written here with TensorFlow from known arrays.

Needs the `tf` extra (`pip install -e '.[tf]'`); without TensorFlow these tests skip, except the
one that checks the message telling to install it.
"""

import json
import re
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from bert_jax.convert.hf import init_params
from bert_jax.convert.tf1 import load_tf1_checkpoint, save_tf1_checkpoint
from bert_jax.errors import UserError
from bert_jax.model.modeling import (
    BertConfig,
    BertForPreTraining,
    is_vocab_param,
    pad_vocab_rows,
    trim_vocab_rows,
)

CONFIG = BertConfig(
    vocab_size=61,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    hidden_act="gelu_new",
    max_position_embeddings=24,
)

# google's bert_config.json: no layer_norm_eps (1e-12 there), and its "gelu" is tanh-approximate.
GOOGLE_CONFIG = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 48,
    "max_position_embeddings": 24,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "type_vocab_size": 2,
    "vocab_size": 61,
}


def google_names(num_layers: int) -> dict[tuple[str, ...], tuple[str, bool]]:
    """bert_jax path -> (variable name in google-research/bert, stored transposed vs Flax).

    Written out from google's modeling.py / run_pretraining.py, independently of bert_jax.convert.
    """
    dense = lambda ours, google: {
        (*ours, "dense", "kernel"): (f"{google}/kernel", False),
        (*ours, "dense", "bias"): (f"{google}/bias", False),
    }
    norm = lambda ours, google: {
        (*ours, "norm", "scale"): (f"{google}/LayerNorm/gamma", False),
        (*ours, "norm", "bias"): (f"{google}/LayerNorm/beta", False),
    }
    emb = ("bert", "embeddings")
    names = {
        (*emb, "word_embeddings", "embedding"): ("bert/embeddings/word_embeddings", False),
        (*emb, "position_embeddings", "embedding"): ("bert/embeddings/position_embeddings", False),
        (*emb, "token_type_embeddings", "embedding"): (
            "bert/embeddings/token_type_embeddings",
            False,
        ),
        **norm((*emb, "LayerNorm"), "bert/embeddings"),
        **dense(("bert", "pooler"), "bert/pooler/dense"),
        **dense(("mlm_transform",), "cls/predictions/transform/dense"),
        **norm(("mlm_layer_norm",), "cls/predictions/transform"),
        ("mlm_output_bias",): ("cls/predictions/output_bias", False),
        ("nsp", "dense", "kernel"): ("cls/seq_relationship/output_weights", True),  # [2, H]
        ("nsp", "dense", "bias"): ("cls/seq_relationship/output_bias", False),
    }
    for i in range(num_layers):
        ours, google = ("bert", "encoder", f"layer_{i}"), f"bert/encoder/layer_{i}"
        for proj in ("query", "key", "value"):
            names |= dense((*ours, "attention", proj), f"{google}/attention/self/{proj}")
        names |= dense((*ours, "attention", "output"), f"{google}/attention/output/dense")
        names |= norm((*ours, "attention_layer_norm"), f"{google}/attention/output")
        names |= dense((*ours, "intermediate"), f"{google}/intermediate/dense")
        names |= dense((*ours, "output"), f"{google}/output/dense")
        names |= norm((*ours, "output_layer_norm"), f"{google}/output")
    return names


def random_params(config: BertConfig, seed: int = 0) -> dict:
    """Every parameter random, LayerNorms and biases too, so any mix-up changes the outputs."""
    params = init_params(config, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    flat = {
        path: np.asarray(x) + rng.normal(0, 0.2, x.shape).astype(x.dtype)
        for path, x in traverse_util.flatten_dict(params).items()
    }
    for path in filter(is_vocab_param, flat):  # bert_jax's padding rows stay zero
        flat[path] = pad_vocab_rows(config, trim_vocab_rows(config, flat[path]))
    return traverse_util.unflatten_dict(flat)


def write_google_checkpoint(tf, directory, variables: dict[str, np.ndarray], config: dict) -> None:
    """bert_config.json and bert_model.ckpt, written by a tf.compat.v1 Saver as google does."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bert_config.json").write_text(json.dumps(config))
    with tf.Graph().as_default():
        var_list = {
            name: tf.compat.v1.get_variable(name, initializer=tf.constant(value))
            for name, value in variables.items()
        }
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(directory / "bert_model.ckpt"), write_meta_graph=False)


def google_variables(params: dict, with_training_state: bool) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(params)
    names = google_names(CONFIG.num_hidden_layers)
    assert flat.keys() == names.keys()
    variables = {}
    for path, (name, transposed) in names.items():
        value = trim_vocab_rows(CONFIG, flat[path]) if is_vocab_param(path) else flat[path]
        variables[name] = np.ascontiguousarray(value.T if transposed else value)  # google's rows
        if with_training_state:
            variables[f"{name}/adam_m"] = np.full_like(variables[name], 0.5)
            variables[f"{name}/adam_v"] = np.full_like(variables[name], 0.25)
    if with_training_state:
        variables["global_step"] = np.array(1000, np.int64)
    return variables


def batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(1, CONFIG.vocab_size, (2, 12)).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    return ids, types, mask


def assert_same_params(got: dict, want: dict) -> None:
    got, want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg="/".join(key))


def test_reads_a_google_checkpoint_with_optimizer_state(tf, tmp_path, capsys):
    params = random_params(CONFIG)
    variables = google_variables(params, with_training_state=True)
    variables["output_weights"] = np.ones((3, 32), np.float32)  # a run_classifier.py head
    variables["output_bias"] = np.zeros((3,), np.float32)
    write_google_checkpoint(tf, tmp_path, variables, GOOGLE_CONFIG)

    config, loaded = load_tf1_checkpoint(tmp_path)
    report = capsys.readouterr().out
    assert config == CONFIG  # google's "gelu" is the tanh approximation
    assert_same_params(loaded, params)
    num_params = len(google_names(CONFIG.num_hidden_layers))
    assert f"skipped {2 * num_params + 1} optimizer/step variables" in report
    assert "ignored 2 variables" in report and "'output_bias', 'output_weights'" in report
    assert "initialised fresh" not in report

    ids, types, mask = batch()
    want = BertForPreTraining(CONFIG).apply({"params": params}, ids, types, mask)
    got = BertForPreTraining(config).apply({"params": loaded}, ids, types, mask)
    np.testing.assert_array_equal(got.mlm_logits, want.mlm_logits)
    np.testing.assert_array_equal(got.nsp_logits, want.nsp_logits)
    assert np.abs(np.asarray(want.mlm_logits)).max() > 1.0


def test_export_writes_google_names_and_reads_back(tf, tmp_path):
    params = random_params(CONFIG, seed=2)
    save_tf1_checkpoint(CONFIG, params, tmp_path)
    assert json.loads((tmp_path / "bert_config.json").read_text()) == GOOGLE_CONFIG

    prefix = str(tmp_path / "bert_model.ckpt")
    stored = dict(tf.train.list_variables(prefix))
    want = google_variables(params, with_training_state=False)
    assert stored.keys() == want.keys()
    assert stored["cls/seq_relationship/output_weights"] == [2, 32]
    reader = tf.train.load_checkpoint(prefix)
    for name, value in want.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=name)

    config, loaded = load_tf1_checkpoint(prefix)  # the prefix works as well as the folder
    assert config == CONFIG
    assert_same_params(loaded, params)


def test_export_matches_transformers_tf_loader(tf, tmp_path):
    """transformers' own TF1 importer, an independent reading of the same names, agrees."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    params = random_params(CONFIG, seed=3)
    save_tf1_checkpoint(CONFIG, params, tmp_path)
    hf_config = transformers.BertConfig(**dict(GOOGLE_CONFIG, hidden_act="gelu_new"))
    model = transformers.BertForPreTraining(hf_config).eval()
    transformers.load_tf_weights_in_bert(model, hf_config, str(tmp_path / "bert_model.ckpt"))
    ids, types, mask = batch()
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            token_type_ids=torch.from_numpy(types.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )
    got = BertForPreTraining(CONFIG).apply({"params": params}, ids, types, mask)
    mlm_err = np.abs(np.asarray(got.mlm_logits) - want.prediction_logits.numpy()).max()
    nsp_err = np.abs(np.asarray(got.nsp_logits) - want.seq_relationship_logits.numpy()).max()
    print(f"\n[TF1 export -> transformers] MLM logits max-abs {mlm_err:.2e}, NSP {nsp_err:.2e}")
    assert mlm_err < 1e-4 and nsp_err < 1e-4


def test_fine_tuned_checkpoint_without_heads_gets_fresh_reported_heads(tf, tmp_path, capsys):
    params = random_params(CONFIG)
    variables = {
        k: v
        for k, v in google_variables(params, with_training_state=False).items()
        if k.startswith("bert/")
    }
    write_google_checkpoint(tf, tmp_path, variables, GOOGLE_CONFIG)
    _, loaded = load_tf1_checkpoint(tmp_path)
    report = capsys.readouterr().out
    assert "mlm_output_bias" in report and "nsp/dense/kernel" in report
    assert "initialised fresh" in report
    assert_same_params(loaded["bert"], params["bert"])


def test_bad_input_is_a_user_error(tf, tmp_path):
    with pytest.raises(UserError, match="no TF1 checkpoint here"):
        load_tf1_checkpoint(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"no \*.index file"):
        load_tf1_checkpoint(tmp_path)

    variables = google_variables(random_params(CONFIG), with_training_state=False)
    write_google_checkpoint(tf, tmp_path / "ok", variables, GOOGLE_CONFIG)
    (tmp_path / "ok" / "bert_config.json").unlink()
    with pytest.raises(UserError, match="bert_config.json not found"):
        load_tf1_checkpoint(tmp_path / "ok")

    wrong = dict(GOOGLE_CONFIG, intermediate_size=50)
    with pytest.raises(UserError) as error:
        load_tf1_checkpoint(tmp_path / "ok", config_file=write_json(tmp_path / "c.json", wrong))
    assert "bert/encoder/layer_0/intermediate/dense/" in str(error.value)
    assert "50" in str(error.value)

    partial = {k: v for k, v in variables.items() if "layer_1" not in k}
    write_google_checkpoint(tf, tmp_path / "partial", partial, GOOGLE_CONFIG)
    with pytest.raises(UserError, match="not a complete BERT encoder") as error:
        load_tf1_checkpoint(tmp_path / "partial")
    assert "bert/encoder/layer_1/attention/self/query/kernel" in str(error.value)


def write_json(path, values):
    path.write_text(json.dumps(values))
    return path


def test_without_tensorflow_the_message_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    with pytest.raises(UserError, match=re.escape('pip install -e ".[tf]"')):
        save_tf1_checkpoint(CONFIG, {}, tmp_path)
