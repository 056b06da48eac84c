"""Fine-tuning rows held in memory (lists, DataFrames, Datasets) featurise exactly as the same rows
read from a TSV / CoNLL file, and their errors name the row or column."""

import pathlib
import string

import numpy as np
import pytest

from bert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning.config import finetuning_config
from bert_jax.finetuning.tasks import features as tasks

SENTENCES = [("the cat sat", "pos"), ("on a mat", "neg"), ("paris tower", "neutral")]
PAIRS = [("the cat", "sat on a mat", "yes"), ("paris", "is a tower", "no"), ("a", "b", "yes")]
TAGGED = [(["the", "cat", "sat"], ["O", "B-ANI", "O"]), (["paris", "tower"], ["B-LOC", "I-LOC"])]


@pytest.fixture(scope="module")
def tokenizer():
    words = ["the", "cat", "sat", "on", "mat", "paris", "tower", "is", "a", "in"]
    chars = list(string.ascii_lowercase + string.digits)
    vocab = [*SPECIAL_TOKENS, *words, *chars, *string.punctuation, *("##" + c for c in chars)]
    return WordPieceTokenizer(vocab, lowercase=True)


def _config(kind, **task):
    config = finetuning_config(kind, "test")
    for key, value in task.items():
        config.task[key] = value
    return config


def _from_file(tmp_path, kind, text, tokenizer, suffix="tsv", **task):
    path = tmp_path / f"train.{suffix}"
    path.write_text(text, encoding="utf-8")
    return tasks.load_task(_config(kind, train_file=str(path), **task), "train", tokenizer)


def _from_rows(kind, rows, tokenizer, split="train", **task):
    return tasks.load_task(_config(kind, **task), split, tokenizer, data=rows)


def _assert_same(a: tasks.TaskData, b: tasks.TaskData):
    assert a.label_list == b.label_list and a.labeled == b.labeled
    assert sorted(a.arrays) == sorted(b.arrays) and a.num_features == b.num_features > 0
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    for name in a.feature_info:
        np.testing.assert_array_equal(a.feature_info[name], b.feature_info[name], err_msg=name)


def _tsv(header, rows) -> str:
    return "\n".join(["\t".join(header), *("\t".join(map(str, r)) for r in rows)]) + "\n"


def test_sentence_and_pair_tuples_featurise_as_the_tsv(tmp_path, tokenizer):
    single = _from_file(tmp_path, "classification", _tsv(["sentence", "label"], SENTENCES),
                        tokenizer)  # fmt: skip
    assert single.label_list == ["neg", "neutral", "pos"]
    _assert_same(single, _from_rows("classification", SENTENCES, tokenizer))
    pairs = _from_file(tmp_path, "classification",
                       _tsv(["sentence1", "sentence2", "label"], PAIRS), tokenizer)  # fmt: skip
    assert pairs.arrays["token_type_ids"].sum() > 0
    _assert_same(pairs, _from_rows("classification", PAIRS, tokenizer))


def test_regression_and_multilabel_tuples_featurise_as_the_tsv(tmp_path, tokenizer):
    scores = [("the cat", 0.5), ("a mat", 4.25), ("paris", -1)]
    tsv = _tsv(["sentence", "label"], scores)
    _assert_same(_from_file(tmp_path, "regression", tsv, tokenizer),
                 _from_rows("regression", scores, tokenizer))  # fmt: skip
    sets = [("the cat", ["pet", "small"]), ("paris", ["city"]), ("a mat", [])]
    tsv = _tsv(["sentence", "labels"], [(t, "|".join(labels)) for t, labels in sets])
    from_file = _from_file(tmp_path, "multilabel", tsv, tokenizer)
    assert from_file.label_list == ["city", "pet", "small"]
    _assert_same(from_file, _from_rows("multilabel", sets, tokenizer))


def test_token_tuples_featurise_as_the_conll_file(tmp_path, tokenizer):
    conll = "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(*s, strict=True)) for s in TAGGED)
    from_file = _from_file(tmp_path, "token_classification", conll + "\n", tokenizer, "conll")
    assert from_file.label_list == ["B-ANI", "B-LOC", "I-LOC", "O"]
    _assert_same(from_file, _from_rows("token_classification", TAGGED, tokenizer))


def test_a_dataframe_with_configured_columns_featurises_as_the_tsv(tmp_path, tokenizer):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"premise": [p[0] for p in PAIRS], "claim": [p[1] for p in PAIRS],
         "gold": [p[2] for p in PAIRS], "other": [1, 2, 3]}
    )  # fmt: skip
    columns = dict(text="premise", text_pair="claim", label="gold")
    from_rows = tasks.load_task(_config_with_columns(columns), "train", tokenizer, data=frame)
    tsv = _tsv(["sentence1", "sentence2", "label"], PAIRS)
    _assert_same(_from_file(tmp_path, "classification", tsv, tokenizer), from_rows)
    with pytest.raises(UserError) as error:  # the default names are absent
        _from_rows("classification", frame, tokenizer)
    assert "no text column" in str(error.value) and "task.columns.text" in str(error.value)


def _config_with_columns(columns):
    config = _config("classification")
    config.task.columns.update(columns)
    return config


def test_a_dataset_with_class_labels_featurises_as_the_files(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    names = ["neg", "neutral", "pos"]
    dataset = datasets.Dataset.from_dict(
        {"sentence": [s for s, _ in SENTENCES], "label": [names.index(y) for _, y in SENTENCES]},
        features=datasets.Features(
            {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
        ),
    )
    tsv = _tsv(["sentence", "label"], SENTENCES)
    _assert_same(_from_file(tmp_path, "classification", tsv, tokenizer),
                 _from_rows("classification", dataset, tokenizer))  # fmt: skip
    tags = ["O", "B-ANI", "B-LOC", "I-LOC"]
    ner = datasets.Dataset.from_dict(
        {"tokens": [words for words, _ in TAGGED],
         "ner_tags": [[tags.index(t) for t in s] for _, s in TAGGED]},
        features=datasets.Features({
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=tags)),
        }),
    )  # fmt: skip
    conll = "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(*s, strict=True)) for s in TAGGED)
    from_file = _from_file(tmp_path, "token_classification", conll + "\n", tokenizer, "conll")
    _assert_same(from_file, _from_rows("token_classification", ner, tokenizer))


def test_configured_labels_fix_the_order_and_are_checked(tokenizer, capsys):
    data = _from_rows("classification", SENTENCES, tokenizer)
    assert "labels: 3 inferred from the training data, sorted: neg, neutral, pos" in (
        capsys.readouterr().out
    )
    ordered = _from_rows("classification", SENTENCES, tokenizer, labels=("pos", "neutral", "neg"))
    assert ordered.label_list == ["pos", "neutral", "neg"]
    np.testing.assert_array_equal(ordered.arrays["labels"], [0, 2, 1])
    assert data.arrays["labels"].tolist() == [2, 0, 1]
    with pytest.raises(UserError) as error:
        _from_rows("classification", SENTENCES, tokenizer, labels=("pos", "neg"))
    assert str(error.value).startswith("train row 2: label 'neutral' is not in task.labels")


@pytest.mark.parametrize(
    "kind, rows, message",
    [
        ("classification", [("the cat", "pos"), ("a", "b", "c", "d")],
         "train row 1: tuple ('a', 'b', 'c', 'd'); expected (text, label) or (text_a, text_b"),
        ("classification", [("the cat", "pos"), ("a", "b", "pos")],
         "train row 1: 3 values, but row 0 has 2"),
        ("classification", [("the cat", "pos"), ("  ", "neg")], "train row 1: text is empty"),
        ("classification", [("the cat", "pos"), ("a mat", None)], "train row 1: missing label"),
        ("classification", [("the cat", "pos"), ("a mat", 0.5)],
         "train row 1: label 0.5 is a float"),
        ("regression", [("the cat", "high")], "train row 0: label 'high' is not a finite number"),
        ("multilabel", [("the cat", "pet,small")], "train row 0: labels field 'pet,small'"),
        ("token_classification", [(["the", "cat"], ["O"])],
         "train row 0: 2 tokens but 1 tags; one tag per token"),
        ("token_classification", [(["the", ""], ["O", "O"])], "train row 0: token 1 is empty"),
        ("squad", [("q", "c", "a")], "the squad kind reads files only"),
        ("classification", "the cat\tpos", "train data is a str: pass a list of rows"),
    ],
)  # fmt: skip
def test_bad_rows_are_one_line_naming_the_row(kind, rows, message, tokenizer):
    with pytest.raises(UserError) as error:
        _from_rows(kind, rows, tokenizer)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(message), str(error.value)


def test_a_dev_label_the_training_rows_lack_names_the_row(tokenizer):
    train = _from_rows("classification", SENTENCES, tokenizer)
    with pytest.raises(UserError) as error:
        tasks.load_task(_config("classification"), "dev", tokenizer, train.label_list,
                        data=[("the cat", "pos"), ("a mat", "angry")])  # fmt: skip
    assert str(error.value).startswith("dev row 1: label 'angry' never occurs in the training data")


def test_unlabeled_test_rows_are_plain_texts_or_token_lists(tokenizer):
    test = _from_rows("classification", ["the cat", "a mat"], tokenizer, split="test",
                      labels=("neg", "pos"))  # fmt: skip
    assert not test.labeled and test.arrays["labels"].tolist() == [-1, -1]
    words = _from_rows("token_classification", [["the", "cat"]], tokenizer, split="test",
                       labels=("O", "B-ANI"))  # fmt: skip
    assert not words.labeled and words.examples[0].words == ["the", "cat"]


def test_the_product_imports_without_pandas_or_datasets():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pandas'] = None; sys.modules['datasets'] = None\n"
        "from bert_jax.finetuning.tasks import rows, features\n"
        "from bert_jax.finetuning import train\n"
        "print(len(rows.table([('a', 'b')], 'train').records))"
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"
