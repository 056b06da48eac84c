"""Fine-tuning from rows in memory trains exactly as from the same rows in files."""

import csv
import pathlib

import jax
import numpy as np
import pytest
from tiny_models import save_tiny_hf_bert

from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning.config import finetuning_config
from bert_jax.finetuning.train import train_and_evaluate

SENTIMENT = pathlib.Path(__file__).resolve().parents[1] / "data" / "tasks" / "sentiment"


def _rows(split: str) -> list[dict]:
    with open(SENTIMENT / f"{split}.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows")
    tokenizer = WordPieceTokenizer.train(sorted(SENTIMENT.glob("*.tsv")), vocab_size=300)
    return save_tiny_hf_bert(root / "tiny_hf", tokenizer)[0]


def _config(model_dir):
    config = finetuning_config("classification", "test")
    config.init_checkpoint = str(model_dir)
    config.num_train_steps = 4
    return config


def test_rows_in_memory_train_as_the_files(model_dir, tmp_path):
    files = _config(model_dir)
    files.task.train_file = str(SENTIMENT / "train.tsv")
    files.task.dev_file = str(SENTIMENT / "dev.tsv")
    files.task.test_file, files.do_predict = str(SENTIMENT / "test.tsv"), True
    from_files = train_and_evaluate(files, tmp_path / "files")
    train = [(row["sentence"], row["label"]) for row in _rows("train")]
    dev = [{"tweet": row["sentence"], "label": row["label"]} for row in _rows("dev")]
    config = _config(model_dir)
    config.task.columns.text = "tweet"
    config.do_predict = True
    test = [row["sentence"] for row in _rows("test")]  # unlabeled: plain texts
    from_rows = train_and_evaluate(config, tmp_path / "rows", train=train, dev=dev, test=test)
    assert from_rows.label_list == from_files.label_list == ["negative", "neutral", "positive"]
    assert from_rows.eval_metrics == from_files.eval_metrics
    assert from_rows.eval_metrics["accuracy"] > 0
    leaves = [jax.tree.leaves(result.params) for result in (from_rows, from_files)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    predicted = [
        [line.split("\t") for line in (path / "test_predictions.tsv").read_text().splitlines()]
        for path in (tmp_path / "rows", tmp_path / "files")
    ]
    assert predicted[0][0] == ["sentence", "label"] and len(predicted[0]) == 101
    assert predicted[0] == predicted[1]


def test_rows_and_a_file_for_one_split_are_an_error(model_dir, tmp_path):
    config = _config(model_dir)
    config.task.train_file = str(SENTIMENT / "train.tsv")
    with pytest.raises(UserError, match="train rows were passed and task.train_file is set"):
        train_and_evaluate(config, tmp_path, train=[("good", "positive")], dev=[("b", "negative")])
