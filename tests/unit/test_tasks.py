"""Task readers, featurisation, SQuAD windows and decoding, metrics plumbing, prediction files."""

import json
import pathlib
import string

import ml_collections
import numpy as np
import pytest

from bert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning.tasks import features as tasks
from bert_jax.finetuning.tasks import readers as tasks_readers
from bert_jax.finetuning.tasks import squad as tasks_squad

SLICES = pathlib.Path(__file__).parents[1] / "data" / "tasks"


@pytest.fixture(scope="module")
def tokenizer():
    """Every ASCII letter, digit and punctuation mark, so any (de-accented) text is spellable."""
    words = ["the", "cat", "sat", "on", "mat", "paris", "tower", "is", "a", "in"]
    chars = list(string.ascii_lowercase + string.digits)
    vocab = [*SPECIAL_TOKENS, *words, *chars, *string.punctuation, *("##" + c for c in chars)]
    return WordPieceTokenizer(vocab, lowercase=True)


def make_config(kind, tmp_path=None, max_seq_length=32, **task):
    config = ml_collections.ConfigDict()
    config.max_seq_length = max_seq_length
    config.doc_stride = 128
    config.max_query_length = 64
    config.max_answer_length = 30
    config.n_best_size = 20
    config.task = ml_collections.ConfigDict(
        {
            "kind": kind,
            "train_file": "",
            "dev_file": "",
            "test_file": "",
            "tfds_name": "",
            "tfds_data_dir": "",
        }
    )
    for key, value in task.items():
        if key in ("doc_stride", "max_query_length", "max_answer_length"):
            config[key] = value
        else:
            config.task[key] = str(value) if isinstance(value, pathlib.Path) else value
    return config


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- sentence classification / regression ---------------------------------------------------------


def test_single_sentence_arrays_and_label_set(tmp_path, tokenizer):
    train = write(
        tmp_path / "train.tsv", 'sentence\tlabel\nthe cat\tpos\n"on" mat\tneg\n\nsat\tpos\n'
    )
    data = tasks.load_task(make_config("classification", train_file=train), "train", tokenizer)
    assert data.label_list == ["neg", "pos"]
    assert data.stats["num_skipped"] == 1  # the blank line
    assert data.examples[1].text_a == '"on" mat'  # no quote processing
    np.testing.assert_array_equal(data.arrays["labels"], [1, 0, 1])
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    the, cat = tokenizer.token_to_id("the"), tokenizer.token_to_id("cat")
    np.testing.assert_array_equal(data.arrays["input_ids"][0, :5], [cls, the, cat, sep, pad])
    np.testing.assert_array_equal(data.arrays["attention_mask"][0, :5], [1, 1, 1, 1, 0])
    assert data.arrays["token_type_ids"].sum() == 0
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert data.arrays[key].shape == (3, 32) and data.arrays[key].dtype == np.int32


def test_sentence_pairs_with_extra_columns_truncate_longest_first(tmp_path, tokenizer):
    # wic layout: lemma is an extra column, ignored by the model but kept for predictions.
    text = "lemma\tsentence1\tsentence2\tlabel\ncat\tthe cat\tcat sat on the mat\t1\nx\ta\tb\t0\n"
    train = write(tmp_path / "wic.tsv", text)
    data = tasks.load_task(
        make_config("classification", max_seq_length=8, train_file=train), "train", tokenizer
    )
    assert data.label_list == ["0", "1"] and data.columns == ["lemma", "sentence1", "sentence2"]
    ids = tokenizer.token_to_id
    # 2 + 5 pieces > 8 - 3: the longer second sentence loses tokens until both fit.
    expected = [
        tokenizer.cls_id,
        ids("the"),
        ids("cat"),
        tokenizer.sep_id,
        ids("cat"),
        ids("sat"),
        ids("on"),
        tokenizer.sep_id,
    ]
    np.testing.assert_array_equal(data.arrays["input_ids"][0], expected)
    np.testing.assert_array_equal(data.arrays["token_type_ids"][0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(data.arrays["token_type_ids"][1], [0, 0, 0, 1, 1, 0, 0, 0])
    assert data.stats["num_truncated"] == 1


def test_featurise_texts_matches_a_tsv_split(tmp_path, tokenizer):
    train = write(tmp_path / "t.tsv", "sentence1\tsentence2\tlabel\nthe cat\tsat\tx\non\tmat\tx\n")
    from_file = tasks.load_task(make_config("classification", train_file=train), "train", tokenizer)
    arrays = tasks.featurise_texts(["the cat", "on"], tokenizer, 32, text_pairs=["sat", "mat"])
    assert sorted(arrays) == ["attention_mask", "input_ids", "token_type_ids"]
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, from_file.arrays[key])


def test_unknown_dev_label_names_file_and_line(tmp_path, tokenizer):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\na\tx\nb\ty\n")
    dev = write(tmp_path / "dev.tsv", "sentence\tlabel\na\tx\nb\tz\n")
    config = make_config("classification", train_file=train, dev_file=dev)
    with pytest.raises(UserError, match=r"dev.tsv:3: label 'z' never occurs in the training data"):
        tasks.load_task(config, "dev", tokenizer)  # reads the label set from train_file itself
    with pytest.raises(UserError, match="dev.tsv:3"):
        tasks.load_task(config, "dev", tokenizer, label_list=["x", "y"])


def test_malformed_rows_and_headers_are_user_errors(tmp_path, tokenizer):
    cases = {
        "sentence\tlabel\na\tx\nb\tx\textra\n": r"bad.tsv:3: 3 tab-separated fields",
        "sentence\tlabel\na\t\n": r"bad.tsv:2: empty 'label'",
        "text\tlabel\na\tx\n": r"bad.tsv:1: header .* has neither",
        "sentence\n a\n": r"bad.tsv:1: header .* has no 'label' column",
        "": "empty file",
    }
    for text, message in cases.items():
        config = make_config("classification", train_file=write(tmp_path / "bad.tsv", text))
        with pytest.raises(UserError, match=message):
            tasks.load_task(config, "train", tokenizer)
    config = make_config("classification", train_file=tmp_path / "missing.tsv")
    with pytest.raises(UserError, match="missing.tsv: file not found"):
        tasks.load_task(config, "train", tokenizer)
    (tmp_path / "latin1.tsv").write_bytes("sentence\tlabel\ncaf\xe9\tx\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.tsv:2: not UTF-8"):
        tasks.load_task(
            make_config("classification", train_file=tmp_path / "latin1.tsv"), "train", tokenizer
        )
    with pytest.raises(UserError, match="task.dev_file is not set"):
        tasks.load_task(make_config("classification"), "dev", tokenizer)


def test_regression_labels_metrics_and_predictions(tmp_path, tokenizer):
    train = write(
        tmp_path / "train.tsv", "sentence1\tsentence2\tlabel\na\tb\t0.5\nc\td\t4\ne\tf\t2\n"
    )
    data = tasks.load_task(make_config("regression", train_file=train), "train", tokenizer)
    assert data.label_list is None and data.num_labels == 1
    np.testing.assert_allclose(data.arrays["labels"], [0.5, 4.0, 2.0])
    assert data.arrays["labels"].dtype == np.float32
    scores = tasks.compute_metrics("regression", np.array([[1.0], [3.0], [2.5]]), data)
    # deviations from the means, times 6: x (-10, 11, -1), y (-7, 5, 2)
    assert scores == pytest.approx({"pearson": 123 / np.sqrt(222 * 78), "spearman": 1.0})
    path = tasks.write_predictions("regression", [1.0, 3.0, 2.5], data, tmp_path / "p.tsv")
    assert path.read_text().splitlines() == [
        "sentence1\tsentence2\tlabel",
        "a\tb\t1",
        "c\td\t3",
        "e\tf\t2.5",
    ]
    bad = write(tmp_path / "bad.tsv", "sentence\tlabel\na\t1.5\nb\thigh\n")
    with pytest.raises(UserError, match=r"bad.tsv:3: label 'high' is not a finite number"):
        tasks.load_task(make_config("regression", train_file=bad), "train", tokenizer)


def test_classification_metrics_and_unlabeled_test_predictions(tmp_path, tokenizer):
    train = write(tmp_path / "train.tsv", "sentence\tlabel\na\tx\nb\ty\nc\ty\nd\tx\n")
    test = write(tmp_path / "test.tsv", "id\tsentence\n7\ta b\n8\tc\n")
    config = make_config("classification", train_file=train, test_file=test)
    data = tasks.load_task(config, "train", tokenizer)
    logits = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])  # x y x x
    scores = tasks.compute_metrics("classification", logits, data)
    # gold x y y x: accuracy 3/4; F1(x) = 2*2/(3+2) = .8, F1(y) = 2/(1+2); MCC = 2/sqrt(12)
    expected = {"accuracy": 0.75, "macro_f1": (0.8 + 2 / 3) / 2, "mcc": 2 / np.sqrt(12)}
    assert scores == pytest.approx(expected)
    assert tasks.main_metric(data) == "accuracy"

    test_data = tasks.load_task(config, "test", tokenizer, label_list=data.label_list)
    assert not test_data.labeled
    np.testing.assert_array_equal(test_data.arrays["labels"], [-1, -1])
    with pytest.raises(UserError, match="has no labels"):
        tasks.compute_metrics("classification", [0, 1], test_data)
    with pytest.raises(ValueError, match="expected ids"):
        tasks.write_predictions("classification", [0, 1, 1], test_data, tmp_path / "p.tsv")
    path = tasks.write_predictions("classification", [1, 0], test_data, tmp_path / "p.tsv")
    assert path.read_text() == "id\tsentence\tlabel\n7\ta b\ty\n8\tc\tx\n"


# --- token classification ------------------------------------------------------------------------


def test_conll_first_piece_labels_and_long_sentence_split(tmp_path, tokenizer):
    text = "-DOCSTART-\tO\n\nParis\tB-LOC\nis\tO\nbeautiful\tO\n\nthe\tO\ncat\tB-PER\n"
    train = write(tmp_path / "train.conll", text)
    data = tasks.load_task(
        make_config("token_classification", max_seq_length=8, train_file=train), "train", tokenizer
    )
    assert data.label_list == ["B-LOC", "B-PER", "O"] and data.is_bio
    assert data.stats["num_skipped"] == 1  # -DOCSTART-
    assert [e.words for e in data.examples] == [["Paris", "is", "beautiful"], ["the", "cat"]]
    # "beautiful" is 9 one-letter pieces: it cannot share the 6-piece window with "paris is",
    # so sentence 0 continues in a second feature and is cut to 6 pieces there.
    assert data.num_features == 3
    np.testing.assert_array_equal(data.feature_info["example_index"], [0, 0, 1])
    np.testing.assert_array_equal(data.arrays["starts_sentence"], [1, 0, 1])  # CRF start scores
    np.testing.assert_array_equal(data.arrays["ends_sentence"], [0, 1, 1])  # ... and end scores
    assert data.stats == {**data.stats, "split_sentences": 1, "cut_words": 1}
    labels, word_index = data.arrays["labels"], data.feature_info["word_index"]
    np.testing.assert_array_equal(labels[0], [-1, 0, 2, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(word_index[0], [-1, 0, 1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(labels[1], [-1, 2, -1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(word_index[1], [-1, 2, -1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(data.arrays["attention_mask"][1], np.ones(8))

    gold_ids = np.where(labels >= 0, labels, 0)
    assert tasks.compute_metrics("token_classification", gold_ids, data) == {
        "token_accuracy": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "f1_LOC": 1.0,
        "f1_PER": 1.0,
    }
    logits = np.eye(3)[gold_ids]
    logits[2, 2] = [0, 0, 5]  # "cat" B-PER -> O: 4/5 words right, 1 of 2 entities found
    scores = tasks.compute_metrics("token_classification", logits, data)
    assert scores == pytest.approx(  # PER keeps its key though no PER entity is left
        {"token_accuracy": 0.8, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "f1_LOC": 1.0,
         "f1_PER": 0.0}
    )  # fmt: skip
    path = tasks.write_predictions("token_classification", logits, data, tmp_path / "p.conll")
    assert path.read_text() == "Paris\tB-LOC\nis\tO\nbeautiful\tO\n\nthe\tO\ncat\tO\n\n"


def test_evaluation_decodes_whole_sentences(tmp_path, tokenizer):
    """Per-word argmax says B-LOC I-LOC I-PER: a LOC cut short and a PER nobody wrote. The
    constrained decoding keeps the sentence one LOC entity, the best sequence IOB2 allows."""
    text = "the\tB-LOC\ncat\tI-LOC\nsat\tI-LOC\n\nthe\tO\ncat\tB-PER\nsat\tI-PER\n"
    train = write(tmp_path / "train.conll", text)
    data = tasks.load_task(
        make_config("token_classification", max_seq_length=8, train_file=train), "train", tokenizer
    )
    iob2 = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    assert data.label_list == iob2
    log_probs = np.full((data.num_features, 8, 5), np.log(0.01))
    words = data.feature_info["word_index"]
    first = {(f, int(w)): p for f in range(data.num_features) for p, w in enumerate(words[f])
             if w >= 0}  # fmt: skip
    sentence = {(0, 0): "B-LOC", (0, 1): "I-LOC", (1, 0): "O", (1, 1): "B-PER", (1, 2): "I-PER"}
    for (feature, word), tag in sentence.items():
        log_probs[feature, first[feature, word], iob2.index(tag)] = np.log(0.9)
    log_probs[0, first[0, 2], [iob2.index("I-PER"), iob2.index("I-LOC")]] = np.log([0.5, 0.45])
    argmax = tasks.decode_predictions("token_classification", log_probs, data, constrained=False)
    assert argmax[0] == ["B-LOC", "I-LOC", "I-PER"]
    assert tasks.decode_predictions("token_classification", log_probs, data) == [
        ["B-LOC", "I-LOC", "I-LOC"],
        ["O", "B-PER", "I-PER"],
    ]
    assert tasks.compute_metrics("token_classification", log_probs, data)["f1"] == 1.0
    # Tag ids (not scores) are taken as they are: seqeval reads LOC 0-1 and PER 2-2.
    ids = log_probs.argmax(-1)
    assert tasks.compute_metrics("token_classification", ids, data)["f1"] == pytest.approx(0.4)


def _perfect_word_scores(data: tasks.TaskData, gold: list[list[str]]) -> np.ndarray:
    """Log-probabilities [n, L, C] that give each word its gold tag 0.9 and the rest 0.01."""
    label_list = data.label_list
    scores = np.full((data.num_features, data.max_seq_length, len(label_list)), np.log(0.01))
    info = data.feature_info
    for feature, position in zip(*np.nonzero(info["word_index"] >= 0), strict=True):
        tags = gold[info["example_index"][feature]]
        tag = tags[info["word_index"][feature, position]]
        scores[feature, position, label_list.index(tag)] = np.log(0.9)
    return scores


def _split_sentence_task(tmp_path, tags: list[str], max_seq_length: int) -> tasks.TaskData:
    """One sentence of one-piece words, longer than one feature; its tags are the label set."""
    words = "the lord god of israel and moses".split()[: len(tags)]
    vocab = [*SPECIAL_TOKENS, *words]
    tokenizer = WordPieceTokenizer(vocab, lowercase=True)
    lines = "".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True))
    train = write(tmp_path / "split.conll", lines)
    config = make_config("token_classification", max_seq_length=max_seq_length, train_file=train)
    return tasks.load_task(config, "train", tokenizer)


def test_a_sentence_split_into_features_is_decoded_as_one_sequence(tmp_path):
    """Seven words, four per feature: the PER entity crosses the cut. Decoding each feature as a
    sentence forced its I-PER after the cut to B-PER; the sentence is decoded once, in evaluation
    and prediction files alike."""
    gold = ["O", "B-PER", "I-PER", "I-PER", "I-PER", "I-PER", "O"]
    data = _split_sentence_task(tmp_path, gold, max_seq_length=6)
    assert data.num_features == 2 and data.stats["split_sentences"] == 1
    scores = _perfect_word_scores(data, [gold])
    argmax = tasks.compute_metrics("token_classification", scores, data, constrained=False)
    assert argmax["f1"] == 1.0
    assert tasks.decode_predictions("token_classification", scores, data) == [gold]
    assert tasks.compute_metrics("token_classification", scores, data)["f1"] == 1.0
    path = tasks.write_predictions("token_classification", scores, data, tmp_path / "p.conll")
    assert [line.split("\t")[1] for line in path.read_text().split("\n") if line] == gold


def _set_word_scores(scores, data, word: int, probabilities: dict[str, float]) -> None:
    """Gives word `word` of example 0 these tag probabilities (0.01 for the other tags)."""
    info = data.feature_info
    feature, position = np.argwhere(
        (info["word_index"] == word) & (info["example_index"] == 0)[:, None]
    )[0]
    scores[feature, position] = np.log(0.01)
    for tag, p in probabilities.items():
        scores[feature, position, data.label_list.index(tag)] = np.log(p)


def test_iobes_entities_stay_open_across_the_cut(tmp_path):
    """IOBES: an entity must close with E-X, but a feature's last word is not the sentence's."""
    gold = ["O", "B-X", "I-X", "I-X", "E-X", "S-X", "O"]
    data = _split_sentence_task(tmp_path, gold, max_seq_length=5)  # three words per feature
    assert data.num_features == 3
    scores = _perfect_word_scores(data, [gold])
    assert tasks.decode_predictions("token_classification", scores, data) == [gold]
    # Where the scores leave an entity open at the sentence's real end, it is closed there.
    _set_word_scores(scores, data, 6, {"I-X": 0.95, "O": 0.001})
    decoded = tasks.decode_predictions("token_classification", scores, data)[0]
    assert decoded == [*gold[:5], "S-X", "S-X"]


def test_a_crf_decodes_the_split_sentence_as_one_chain(tmp_path):
    """A CRF's start and end scores belong to the sentence's first and last word, not to the
    words beside the cut (here without the scheme's rules, as for IOB1 data: the learned scores
    alone decide), and its transitions join the words on either side of the cut."""
    gold = ["O", "B-PER", "I-PER", "I-PER", "I-PER", "I-PER", "O"]
    data = _split_sentence_task(tmp_path, gold, max_seq_length=6)  # the cut: words 0-3, 4-6
    labels = data.label_list
    scores = _perfect_word_scores(data, [gold])
    _set_word_scores(scores, data, 6, {"I-PER": 0.5, "O": 0.45})
    crf = {"transitions": np.zeros((3, 3)), "start": np.zeros(3), "end": np.zeros(3)}
    zero = tasks.decode_predictions("token_classification", scores, data, False, crf)[0]
    assert zero == [*gold[:-1], "I-PER"]  # a zero CRF is each word's argmax
    crf["start"][labels.index("I-PER")] = -10.0  # no sentence opens inside an entity
    crf["end"][labels.index("I-PER")] = -10.0  # ... nor ends inside one
    assert tasks.decode_predictions("token_classification", scores, data, False, crf) == [gold]
    # A transition that joins I-PER to I-PER dearly splits the entity wherever it falls.
    crf["transitions"][labels.index("I-PER"), labels.index("I-PER")] = -10.0
    decoded = tasks.decode_predictions("token_classification", scores, data, False, crf)[0]
    assert all(a != "I-PER" or b != "I-PER" for a, b in zip(decoded, decoded[1:], strict=False))
    assert decoded != gold


def test_conll_errors_and_unknown_tags(tmp_path, tokenizer):
    mixed = write(tmp_path / "mixed.conll", "a\tO\nb\n")
    with pytest.raises(UserError, match="mixed.conll:2: expected `token<TAB>tag`"):
        tasks.load_task(make_config("token_classification", train_file=mixed), "train", tokenizer)
    train = write(tmp_path / "train.conll", "a\tnn\n\nb\tvb\n")
    dev = write(tmp_path / "dev.conll", "a\tnn\nb\tvb\n\nc\tjj\n")
    config = make_config("token_classification", train_file=train, dev_file=dev)
    with pytest.raises(UserError, match="dev.conll:4: label 'jj' never occurs"):
        tasks.load_task(config, "dev", tokenizer)
    assert not tasks.load_task(config, "train", tokenizer).is_bio  # POS tags: accuracy only


def test_a_sentence_per_line_tsv_is_not_read_as_one_conll_sentence(tmp_path, tokenizer):
    """A classification TSV given to token classification would be one 'sentence' of every row
    (its sentences as tokens, its labels as tags); it stops with one line instead."""
    tsv = write(tmp_path / "train.tsv", "sentence\tlabel\nthe flight was late\tnegative\n")
    config = make_config("token_classification", train_file=tsv)
    with pytest.raises(UserError, match=r"train.tsv:2: 'the flight was late' is several words"):
        tasks.load_task(config, "train", tokenizer)
    one_word_rows = write(tmp_path / "words.tsv", "".join(f"w{i}\tO\n" for i in range(10_001)))
    config = make_config("token_classification", train_file=one_word_rows)
    with pytest.raises(UserError, match="words.tsv:1: a sentence of over 10000 tokens"):
        tasks.load_task(config, "train", tokenizer)


# --- SQuAD ---------------------------------------------------------------------------------------


def squad_file(path, paragraphs):
    data = [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": context,
                    "qas": [
                        {
                            "id": qid,
                            "question": question,
                            "answers": [
                                {"text": text, "answer_start": context.index(text)}
                                for text in answers
                            ],
                        }
                        for qid, question, answers in qas
                    ],
                }
                for context, qas in paragraphs
            ],
        }
    ]
    return write(path, json.dumps({"version": "1.1", "data": data}))


def gold_logits(data):
    """Logits that point at each window's stored answer span (only where the window has it)."""
    n, length = data.arrays["input_ids"].shape
    start, end = np.zeros((n, length)), np.zeros((n, length))
    has_answer = data.arrays["start_positions"] > 0
    rows = np.flatnonzero(has_answer)
    start[rows, data.arrays["start_positions"][rows]] = 10.0
    end[rows, data.arrays["end_positions"][rows]] = 10.0
    return {"start_logits": start, "end_logits": end}


LONG_CONTEXT = (
    "Crème  brûlée\tis a   dessert. "
    + " ".join(f"w{i}" for i in range(40))
    + " The Eiffel Tower is in Paris, naïvely 日本 said."
)


def test_squad_windows_round_trip_to_exact_original_text(tmp_path, tokenizer):
    answers = ["brûlée", "is a   dessert", "Eiffel Tower", "naïvely 日本", "w17 w18"]
    path = squad_file(
        tmp_path / "dev.json",
        [
            (LONG_CONTEXT, [(f"q{i}", "which cat?", [text]) for i, text in enumerate(answers)]),
            ("The cat sat.", [("short", "who sat?", ["The cat", "cat"])]),
        ],
    )
    config = make_config(
        "squad", max_seq_length=32, dev_file=path, doc_stride=8, max_query_length=4
    )
    data = tasks.load_task(config, "dev", tokenizer)
    _, offsets = tokenizer.encode_with_offsets(LONG_CONTEXT)
    window = 32 - 3 - min(len(tokenizer.encode("which cat?")), 4)
    expected_windows = 1 + -(-(len(offsets) - window) // 8)
    example_index = data.feature_info["example_index"]
    assert np.sum(example_index == 0) == expected_windows > 3
    # Every context token is "max context" in exactly one window of its question.
    first_question = example_index == 0
    owned = data.feature_info["max_context"][first_question]
    owned_offsets = data.feature_info["token_offsets"][first_question][owned]
    assert sorted(map(tuple, owned_offsets.tolist())) == sorted(map(tuple, offsets))
    # Windows of q4 ("w17 w18") that hold the answer: several, but the decode picks one.
    assert np.sum(data.arrays["start_positions"][example_index == 4] > 0) > 1

    predictions = tasks.decode_predictions("squad", gold_logits(data), data)
    assert predictions == {**{f"q{i}": text for i, text in enumerate(answers)}, "short": "The cat"}
    assert tasks.compute_metrics("squad", gold_logits(data), data) == {
        "exact_match": 1.0,
        "f1": 1.0,
    }
    path = tasks.write_predictions("squad", gold_logits(data), data, tmp_path / "p.json")
    assert json.loads(path.read_text(encoding="utf-8")) == predictions


def test_squad_decode_respects_span_rules():
    context = "a b c d e"
    offsets = np.full((1, 8, 2), -1, np.int32)
    offsets[0, 2:7] = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # tokens 2..6 are context
    info = {
        "example_index": np.zeros(1, np.int32),
        "token_offsets": offsets,
        "max_context": offsets[..., 0] >= 0,
    }
    example = [tasks_squad.SquadExample("q", "?", context)]
    start = np.array([[9.0, 9, 0, 0, 0, 0, 5, 0]])  # [CLS] and question tokens are not answers
    end = np.array([[9.0, 9, 0, 4, 0, 0, 0, 0]])  # best end (3) lies before best start (6)
    decoded = tasks_squad.decode_squad(
        start, end, example, info, n_best_size=20, max_answer_length=30
    )
    assert decoded == {"q": "e"}  # start 6 with end 6 (5 + 0) beats start 2..3 + end 3 (0 + 4)
    start[0, 6] = 0
    decoded = tasks_squad.decode_squad(
        start, end, example, info, n_best_size=20, max_answer_length=1
    )
    assert decoded == {"q": "b"}  # the single-token span on the best end
    info["max_context"][0, 3] = False  # ... unless its start token belongs to another window
    decoded = tasks_squad.decode_squad(
        start, end, example, info, n_best_size=20, max_answer_length=2
    )
    assert decoded == {"q": "a b"}


def test_squad_training_features_and_bad_files(tmp_path, tokenizer):
    context = "The cat sat on the mat."
    data = json.loads(
        squad_file(tmp_path / "t.json", [(context, [("a", "?", ["mat"])])]).read_text()
    )
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas.append({"id": "off", "question": "?", "answers": [{"text": "mat", "answer_start": 0}]})
    qas.append({"id": "none", "question": "?", "answers": []})
    train = write(tmp_path / "train.json", json.dumps(data))
    train_data = tasks.load_task(make_config("squad", train_file=train), "train", tokenizer)
    # "off" has an answer_start that does not hold its text: no training features;
    # "none" has no answer: skipped when reading.
    assert train_data.stats["unaligned_answers"] == 1 and train_data.stats["num_skipped"] == 1
    assert train_data.num_features == 1
    ids = train_data.arrays["input_ids"][0]
    start, end = train_data.arrays["start_positions"][0], train_data.arrays["end_positions"][0]
    assert tokenizer.convert_ids_to_tokens(ids[start : end + 1]) == ["mat"]
    assert train_data.arrays["token_type_ids"][0, start] == 1

    with pytest.raises(UserError, match="doc_stride=0 is too small"):
        tasks.load_task(make_config("squad", train_file=train, doc_stride=0), "train", tokenizer)

    qas[0].pop("question")
    bad = write(tmp_path / "bad.json", json.dumps(data))
    with pytest.raises(UserError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\]: no "):
        tasks.load_task(make_config("squad", train_file=bad), "train", tokenizer)
    qas[0]["question"], qas[1]["id"] = "?", "a"
    bad = write(tmp_path / "bad.json", json.dumps(data))
    with pytest.raises(UserError, match="duplicate question id 'a'"):
        tasks.load_task(make_config("squad", train_file=bad), "train", tokenizer)
    with pytest.raises(UserError, match="nothing.json: file not found"):
        tasks.load_task(make_config("squad", dev_file=tmp_path / "nothing.json"), "dev", tokenizer)
    bad = write(tmp_path / "bad.json", '{"data": [')
    with pytest.raises(UserError, match="bad.json:1: not valid JSON"):
        tasks.load_task(make_config("squad", train_file=bad), "train", tokenizer)


# --- TFDS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A tiny TFDS dataset in ArrayRecord form: GLUE-like pairs, STS-B-like scores, NER, SQuAD."""
    tfds = pytest.importorskip("tensorflow_datasets")
    features = {
        "pairs": {
            "sentence1": tfds.features.Text(),
            "sentence2": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["no", "yes"]),
            "idx": np.int32,
        },
        "scores": {"sentence": tfds.features.Text(), "label": np.float32},
        "ner": {
            "tokens": tfds.features.Sequence(tfds.features.Text()),
            "ner": tfds.features.Sequence(tfds.features.ClassLabel(names=["O", "B-LOC"])),
        },
        "squad": {
            "id": tfds.features.Text(),
            "title": tfds.features.Text(),
            "context": tfds.features.Text(),
            "question": tfds.features.Text(),
            "answers": tfds.features.Sequence(
                {"text": tfds.features.Text(), "answer_start": np.int32}
            ),
        },
    }
    rows = {
        "pairs": [
            {"sentence1": "the cat", "sentence2": "sat", "label": 1, "idx": 0},
            {"sentence1": "on", "sentence2": "the mat", "label": 0, "idx": 1},
        ],
        "scores": [{"sentence": "a", "label": 0.5}, {"sentence": "b", "label": 2.0}],
        "ner": [{"tokens": ["in", "Paris"], "ner": [0, 1]}, {"tokens": ["cat"], "ner": [0]}],
        "squad": [
            {
                "id": "q0",
                "title": "t",
                "context": "The  cat sat.",
                "question": "who?",
                "answers": {"text": ["cat"], "answer_start": [5]},
            }
        ],
    }

    class BertJaxTiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in features]

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(features[self.builder_config.name]),
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples() for split in ("train", "validation")}

        def _generate_examples(self):
            yield from enumerate(rows[self.builder_config.name])

    data_dir = tmp_path_factory.mktemp("tfds")
    for name in features:
        BertJaxTiny(
            config=name, data_dir=data_dir, file_format="array_record"
        ).download_and_prepare()
    return data_dir


def test_tfds_datasets_go_through_the_same_featurisation(tmp_path, tokenizer, tfds_dir):
    config = make_config("classification", tfds_name="bert_jax_tiny/pairs", tfds_data_dir=tfds_dir)
    from_tfds = tasks.load_task(config, "dev", tokenizer)
    assert from_tfds.label_list == ["no", "yes"] and from_tfds.source.endswith("[validation]")
    tsv = write(
        tmp_path / "dev.tsv", "sentence1\tsentence2\tlabel\nthe cat\tsat\tyes\non\tthe mat\tno\n"
    )
    config = make_config("classification", dev_file=tsv)
    from_file = tasks.load_task(config, "dev", tokenizer, label_list=["no", "yes"])
    for key, value in from_file.arrays.items():
        np.testing.assert_array_equal(from_tfds.arrays[key], value)

    config = make_config("regression", tfds_name="bert_jax_tiny/scores", tfds_data_dir=tfds_dir)
    scores = tasks.load_task(config, "train", tokenizer)
    np.testing.assert_array_equal(scores.arrays["labels"], [0.5, 2.0])

    config = make_config(
        "token_classification", tfds_name="bert_jax_tiny/ner", tfds_data_dir=tfds_dir
    )
    ner = tasks.load_task(config, "train", tokenizer)
    assert ner.label_list == ["O", "B-LOC"] and ner.is_bio  # the ClassLabel order, not sorted
    assert [e.tags for e in ner.examples] == [["O", "B-LOC"], ["O"]]
    np.testing.assert_array_equal(ner.arrays["labels"][0, :4], [-1, 0, 1, -1])

    config = make_config("squad", tfds_name="bert_jax_tiny/squad", tfds_data_dir=tfds_dir)
    squad = tasks.load_task(config, "train", tokenizer)
    assert tasks.decode_predictions("squad", gold_logits(squad), squad) == {"q0": "cat"}

    config = make_config("classification", tfds_name="bert_jax_tiny/absent", tfds_data_dir=tfds_dir)
    with pytest.raises(UserError, match="TFDS dataset 'bert_jax_tiny/absent' is not prepared"):
        tasks.load_task(config, "train", tokenizer)
    config = make_config("classification", tfds_name="bert_jax_tiny/pairs", tfds_data_dir=tfds_dir)
    with pytest.raises(UserError, match="has no test split"):
        tasks.load_task(config, "test", tokenizer, label_list=["no", "yes"])


# --- the bundled slices and the real task files -------------------------------------------------

SLICE_TASKS = {
    "sentiment": ("classification", "tsv", 3),
    "supersense": ("classification", "tsv", None),
    "wic": ("classification", "tsv", 2),
    "pos": ("token_classification", "conll", None),
    "qa": ("squad", "json", None),
}


@pytest.mark.parametrize("name", sorted(SLICE_TASKS))
def test_bundled_slices_load_and_score_perfectly_with_gold_predictions(name, tokenizer):
    kind, ext, num_labels = SLICE_TASKS[name]
    files = {f"{split}_file": SLICES / name / f"{split}.{ext}" for split in ("train", "dev")}
    config = make_config(kind, max_seq_length=64, max_query_length=24, doc_stride=16, **files)
    train = tasks.load_task(config, "train", tokenizer)
    dev = tasks.load_task(config, "dev", tokenizer, label_list=train.label_list)
    assert train.stats["num_examples"] >= (20 if kind == "token_classification" else 300)
    if num_labels:
        assert len(train.label_list) == num_labels
    if kind == "squad":
        predictions = gold_logits(dev)
        assert tasks.compute_metrics(kind, predictions, dev) == {"exact_match": 1.0, "f1": 1.0}
    else:
        labels = dev.arrays["labels"]
        predictions = np.where(labels >= 0, labels, 0)
        scores = tasks.compute_metrics(kind, predictions, dev)
        assert scores[tasks.main_metric(dev)] == 1.0


def test_real_task_files_match_the_data_readme(shared_data):
    root = shared_data / "tasks"
    sentiment = tasks_readers.read_tsv(root / "sentiment" / "dev.tsv", False, labeled=True)
    labels = [e.label for e in sentiment.examples]
    assert {label: labels.count(label) for label in set(labels)} == {
        "negative": 1595,
        "neutral": 1442,
        "positive": 679,
    }
    wic = tasks_readers.read_tsv(root / "wic" / "test.tsv", False, labeled=True)
    assert len(wic.examples) == 1652 and wic.columns == ["lemma", "sentence1", "sentence2"]
    pos = tasks_readers.read_conll(root / "pos" / "dev.conll", labeled=True)
    assert len(pos.examples) == 6095 and sum(len(e.words) for e in pos.examples) == 120937
    qa, skipped = tasks_squad.read_squad_json(root / "qa" / "dev.json", labeled=True)
    assert (len(qa), skipped, sum(len(e.answers) for e in qa)) == (3822, 0, 3885)


def test_real_qa_dev_round_trips_with_the_bert_vocab(shared_data):
    tokenizer = WordPieceTokenizer.from_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    config = make_config(
        "squad",
        max_seq_length=64,
        dev_file=shared_data / "tasks/qa/dev.json",
        max_query_length=24,
        doc_stride=16,
    )
    data = tasks.load_task(config, "dev", tokenizer)
    assert data.stats["unaligned_answers"] == 0
    predictions = tasks.decode_predictions("squad", gold_logits(data), data)
    exact = sum(predictions[e.qas_id] == e.answers[0] for e in data.examples)
    assert exact == len(data.examples) == 3822


def test_sentence_arrays_match_transformers_bert_tokenizer(shared_data):
    transformers = pytest.importorskip("transformers")
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    reference = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = make_config("classification", dev_file=shared_data / "tasks/sentiment/dev.tsv")
    data = tasks.load_task(
        config, "dev", WordPieceTokenizer.from_vocab(vocab), ["negative", "neutral", "positive"]
    )
    assert data.stats["num_truncated"] > 1000  # max_seq_length 32 cuts most tweets
    texts = [e.text_a for e in data.examples]
    expected = reference(texts, truncation=True, max_length=32, padding="max_length")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        np.testing.assert_array_equal(data.arrays[key], expected[key])
