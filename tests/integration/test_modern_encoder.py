"""A ModernBERT-shaped encoder (rope, GeGLU, pre-LN, local windows, no token types) with a
tokenizer.json through fine-tuning (classification, tagging, packed rows), the fill-mask pipeline
against transformers' own on an imported ModernBertForMaskedLM, and `prepare`."""

import shutil

import jax
import numpy as np
import pytest
from test_finetune import LEARNABLE, _config  # noqa: E402  (the fine-tuning tests' helpers)
from tiny_models import synthetic_tasks, tiny_modern_config, train_tiny_bpe

import bert_jax
from bert_jax.convert import hf
from bert_jax.data import corpus
from bert_jax.data.json_tokenizer import JsonTokenizer
from bert_jax.finetuning import train as finetune_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def modern(tmp_path_factory):
    """(ModernBERT directory with a tokenizer.json, the synthetic task files, the tokenizer)."""
    root = tmp_path_factory.mktemp("modern")
    files = synthetic_tasks(root)
    texts = [line for p in files.values() for line in p.read_text().splitlines()]
    tokenizer_file = train_tiny_bpe(root / "tokenizer.json", texts)
    tokenizer = JsonTokenizer.from_file(tokenizer_file)
    config = tiny_modern_config(tokenizer.vocab_size)
    model_dir = root / "modern_hf"
    hf.save_hf_checkpoint(config, hf.init_params(config, jax.random.key(0)), model_dir)
    shutil.copy(tokenizer_file, model_dir / "tokenizer.json")
    return model_dir, files, tokenizer


@pytest.mark.parametrize("packing", [True, False])
def test_modern_encoder_learns_sentence_pairs(modern, tmp_path, packing):
    model_dir, files, _ = modern
    config = _config(
        "classification", model_dir, files["pairs_train"], files["pairs_dev"],
        packing=packing, **LEARNABLE,
    )  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert result.label_list == ["no", "yes"]
    assert result.eval_metrics["accuracy"] >= 0.9


def test_modern_encoder_learns_bio_tags(modern, tmp_path):
    model_dir, files, _ = modern
    config = _config("token_classification", model_dir, files["tags_train"], files["tags_dev"],
                     **LEARNABLE)  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert result.eval_metrics["token_accuracy"] >= 0.9


def test_modern_encoder_learns_regression(modern, tmp_path):
    model_dir, files, _ = modern
    config = _config("regression", model_dir, files["values_train"], files["values_dev"],
                     **LEARNABLE)  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert result.eval_metrics["pearson"] >= 0.9


def test_modern_encoder_learns_tags_with_the_crf_and_head_window(modern, tmp_path):
    """The Chinese NER recipe's head (CRF, head_window=1) on a modern encoder."""
    model_dir, files, _ = modern
    config = _config(
        "token_classification", model_dir, files["tags_train"], files["tags_dev"],
        **LEARNABLE, crf=True, head_window=1,
    )  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert "transitions" in str(jax.tree_util.tree_structure(result.params))
    assert result.eval_metrics["token_accuracy"] >= 0.9


def test_fill_mask_on_imported_modernbert_equals_transformers(modern, tmp_path):
    _, _, tokenizer = modern
    torch.manual_seed(0)
    values = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                  num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                  local_attention=8, pad_token_id=tokenizer.pad_id,
                  attn_implementation="eager", reference_compile=False)  # fmt: skip
    model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(**values)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    shutil.copy(modern[0] / "tokenizer.json", tmp_path / "tokenizer.json")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", pad_token="[PAD]", unk_token="[UNK]",
    )  # fmt: skip
    texts = ["the river stone was [MASK] under the table", "[MASK] smith runs quickly"]
    theirs = transformers.pipeline("fill-mask", model=model, tokenizer=fast, top_k=5)(texts)
    ours = bert_jax.pipeline("fill-mask", tmp_path, top_k=5)(texts)
    for mine, reference in zip(ours, theirs, strict=True):
        assert [c["token"] for c in mine] == [c["token"] for c in reference]
        assert all("\u0120" not in c.get("sequence", "") for c in mine)
        np.testing.assert_allclose(
            [c["score"] for c in mine], [c["score"] for c in reference], atol=1e-5
        )


def test_prepare_takes_a_tokenizer_json(modern, tmp_path):
    _, files, tokenizer = modern
    text = tmp_path / "corpus.txt"
    lines = files["pairs_train"].read_text().splitlines()[1:41]
    text.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n")
    tokenizer_file = modern[0] / "tokenizer.json"
    spec = corpus.corpus_spec([str(text)], str(tokenizer_file), validation_fraction=0.0)
    prepared = corpus.prepare(spec, str(tmp_path / "data"), show_progress=False)
    stored = prepared.tokenizer()
    assert isinstance(stored, JsonTokenizer)
    assert stored.fingerprint() == tokenizer.fingerprint()
    documents = list(prepared.data_source("train"))
    tokens = np.concatenate([np.asarray(d["tokens"]) for d in documents]).tolist()
    assert tokens == [i for line in lines for i in tokenizer.encode(line)]


def test_export_writes_a_directory_transformers_loads_with_its_tokenizer(modern, tmp_path):
    from bert_jax.convert.export import export

    model_dir, _, tokenizer = modern
    out = export(model_dir, tmp_path / "out")
    assert not (out / "vocab.txt").exists()
    fast = transformers.AutoTokenizer.from_pretrained(out)
    text = "the river stone was [MASK] again"
    assert fast(text)["input_ids"] == [
        tokenizer.cls_id, *tokenizer.encode_masked(text, "[MASK]"), tokenizer.sep_id
    ]  # fmt: skip
    model = transformers.AutoModelForMaskedLM.from_pretrained(
        out, attn_implementation="eager", reference_compile=False
    )
    assert type(model).__name__ == "ModernBertForMaskedLM"
