"""A tokenizer.json (byte-level BPE as ModernBERT's, built in the test) behind the WordPiece
tokenizer's interface: ids as the `tokenizers` library gives them, specials, continuation
pieces, the pipelines' mask encoding, pickling, and one-line errors."""

import json
import pickle

import pytest
import tokenizers
from tiny_models import train_tiny_bpe

from bert_jax.data.json_tokenizer import JsonTokenizer
from bert_jax.data.tokenization import WordPieceTokenizer, load_tokenizer_file
from bert_jax.errors import UserError

TEXTS = [
    "the flight was delayed again",
    "great service, thank you!",
    "The LORD is my shepherd; I shall not want.",
    "He maketh me to lie down in green pastures",
] * 5


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    return train_tiny_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json", TEXTS)


def test_ids_are_the_tokenizers_library_s(bpe_file):
    reference = tokenizers.Tokenizer.from_file(str(bpe_file))
    tokenizer = load_tokenizer_file(bpe_file)
    assert isinstance(tokenizer, JsonTokenizer)
    text = "the flight was great, thank you"
    assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert len(tokenizer.encode(text)) < len(text)  # merges learnt, not bytes
    ids, lengths = tokenizer.encode_lines(TEXTS[:3])
    assert lengths.tolist() == [len(tokenizer.encode(t)) for t in TEXTS[:3]]
    assert ids.tolist() == [i for t in TEXTS[:3] for i in tokenizer.encode(t)]
    assert tokenizer.vocab_size == reference.get_vocab_size(with_added_tokens=True)
    vocab = reference.get_vocab(with_added_tokens=True)
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (
        vocab["[CLS]"],
        vocab["[SEP]"],
        vocab["[MASK]"],
    )
    assert tokenizer.pad_id == vocab["[PAD]"] and tokenizer.unk_id == vocab["[UNK]"]
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_continuation_pieces_and_mask_encoding(bpe_file):
    tokenizer = load_tokenizer_file(bpe_file)
    pieces = tokenizer.tokenize("the shepherdess was delayed")
    marks = [tokenizer.is_subword(i) for i in tokenizer.encode("the shepherdess was delayed")]
    # a piece after a space (Ġ) starts a word; one of letters or digits continues one (a
    # line's first word too: the vocabulary cannot tell, so whole-word masking groups it on)
    assert marks == [not p.startswith("\u0120") and p[:1].isalnum() for p in pieces]
    assert any(marks) and not all(marks)
    assert not tokenizer.subword_mask[tokenizer.mask_id]
    # [MASK] takes the space before it, as transformers' ModernBERT tokenizer does
    masked = tokenizer.encode_masked("the flight was [MASK] again", "[MASK]")
    reference = tokenizers.Tokenizer.from_file(str(bpe_file))
    assert masked == reference.encode("the flight was [MASK] again", add_special_tokens=False).ids
    assert masked[len(tokenizer.encode("the flight was"))] == tokenizer.mask_id
    # the WordPiece tokenizer's mask encoding is unchanged: pieces around [MASK]
    wordpiece = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    assert wordpiece.encode_masked("a [MASK] b", "[MASK]") == [5, 4, 6]


def test_pickles_and_fingerprints(bpe_file, tmp_path):
    tokenizer = load_tokenizer_file(bpe_file)
    again = pickle.loads(pickle.dumps(tokenizer))
    assert again.encode(TEXTS[2]) == tokenizer.encode(TEXTS[2])
    assert again.fingerprint() == tokenizer.fingerprint()
    tokenizer.save_vocab(tmp_path / "copy" / "tokenizer.json")
    assert load_tokenizer_file(tmp_path / "copy" / "tokenizer.json").fingerprint() == (
        tokenizer.fingerprint()
    )
    other = train_tiny_bpe(tmp_path / "other.json", TEXTS[:2])
    assert load_tokenizer_file(other).fingerprint() != tokenizer.fingerprint()


def test_bad_files_are_one_line_errors(bpe_file, tmp_path):
    with pytest.raises(UserError, match="tokenizer file not found"):
        load_tokenizer_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer_file(tmp_path / "bad.json")
    values = json.loads(bpe_file.read_text())
    values["added_tokens"] = [t for t in values["added_tokens"] if t["content"] != "[MASK]"]
    del values["model"]["vocab"]["[MASK]"]
    (tmp_path / "nomask.json").write_text(json.dumps(values))
    with pytest.raises(UserError, match="no mask token"):
        load_tokenizer_file(tmp_path / "nomask.json")


def test_is_callable_as_the_wordpiece_tokenizer_is(bpe_file):
    """The transformers-style call gives [CLS] A [SEP] B [SEP] rows with a tokenizer.json too."""
    tokenizer = load_tokenizer_file(bpe_file)
    a, b = "the flight was delayed", "thank you"
    out = tokenizer(a, b)
    ids_a, ids_b = tokenizer.encode(a), tokenizer.encode(b)
    expected = [tokenizer.cls_id, *ids_a, tokenizer.sep_id, *ids_b, tokenizer.sep_id]
    assert out["input_ids"].tolist() == [expected]  # one row, as transformers returns
    assert out["token_type_ids"].tolist() == [[0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)]
    batch = tokenizer([a, b], padding="max_length", max_length=24)
    assert batch["input_ids"].shape == (2, 24)
    assert batch["attention_mask"].sum(1).tolist() == [len(ids_a) + 2, len(ids_b) + 2]
