"""Chinese whole-word masking with HFL Chinese-BERT-wwm's semantics.

With data.whole_word_masking=True on a dataset prepared with a word segmenter, all characters of
a segmented word are masked together, 80/10/10 decided per word, the budget unchanged. Checked
on rows from the pipeline against the word starts each row's tokens came from: on a synthetic
corpus whose words can be read off the tokens (no shared data), and on a slice of the Chinese
corpus segmented by jieba (../shared/data), where each segment is found again in the documents.
"""

import numpy as np
import pytest

from bert_jax.data import corpus, input_pipeline, masking
from bert_jax.data import examples as pretraining
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.pretraining.config import data_config_dict

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MASK = 4
HANZI = [chr(0x4E00 + i) for i in range(300)]
ENGLISH = {"playing": ["play", "##ing"], "football": ["football"]}


def _segments(batch):
    """Per row: (start, stop) of A and of B."""
    length = batch["attention_mask"].sum(1)
    b_start = np.argmax(batch["token_type_ids"], axis=1)
    return [((1, b - 1), (b, n - 1)) for b, n in zip(b_start, length, strict=True)]


def word_statistics(batches, row_word_starts):
    """Checks every masked word against the word starts of its row.

    row_word_starts(batch, row, original_ids) -> bool [L] (True where a word starts inside a
    segment) or None when the row's words are unknown (skipped). Returns counts: words masked
    in part, masked words by decision (mask / keep / random), words with [MASK] and other
    tokens, and predictions against the budget.
    """
    counts = dict(rows=0, skipped=0, partial=0, mask=0, keep=0, random=0, mixed=0)
    counts.update(predicted=0, budget=0, tokens=0)
    for batch in batches:
        original = pretraining.original_ids(batch)
        masked = np.zeros(original.shape, bool)
        rows, cols = np.nonzero(batch["masked_lm_weights"])
        masked[rows, batch["masked_lm_positions"][rows, cols]] = True
        tokens = batch["attention_mask"].sum(1)
        counts["predicted"] += int(masked.sum())
        counts["budget"] += int(np.minimum(20, np.maximum(1, np.rint(tokens * 0.15))).sum())
        counts["tokens"] += int(tokens.sum())
        for row, segments in enumerate(_segments(batch)):
            counts["rows"] += 1
            starts = row_word_starts(batch, row, original[row])
            if starts is None:
                counts["skipped"] += 1
                continue
            for start, stop in segments:
                bounds = [*np.flatnonzero(starts[start:stop]) + start, stop]
                assert bounds[0] == start  # a segment's first token starts a word
                for first, last in zip(bounds[:-1], bounds[1:], strict=True):
                    hit = masked[row, first:last]
                    if not hit.any():
                        continue
                    if not hit.all():
                        counts["partial"] += 1
                        continue
                    shown = batch["input_ids"][row, first:last]
                    is_mask = shown == MASK
                    if is_mask.all():
                        counts["mask"] += 1
                    elif (shown == original[row, first:last]).all():
                        counts["keep"] += 1
                    else:
                        counts["random"] += 1
                        counts["mixed"] += int(is_mask.any())
    return counts


def _assert_hfl_semantics(counts):
    assert counts["partial"] == 0, counts
    words = counts["mask"] + counts["keep"] + counts["random"]
    # A random word shows [MASK] only where a random id happens to be [MASK]'s.
    assert counts["mixed"] <= 2e-3 * words, counts
    return words


def test_a_word_cut_by_a_segment_start_starts_at_its_first_kept_token():
    vocab = pretraining.Vocabulary(size=50, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    tokens = np.arange(10, 30, dtype=np.int32)
    word_starts = np.array([1, 0, 0] * 6 + [1, 0], np.uint8)  # words of three tokens
    # A = tokens 1..4 (starts inside word 0), B = tokens 10..12 (inside word 3).
    rows = pretraining.assemble(
        tokens, np.array([1]), np.array([4]), np.array([10]), np.array([3]), 12, vocab, word_starts
    )
    expected = [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0]  # [CLS] A [SEP] B [SEP] [PAD] [PAD]
    assert rows["word_starts"][0].astype(int).tolist() == expected
    options = pretraining.ExampleOptions(
        max_seq_length=12, max_predictions_per_seq=4, masked_lm_prob=0.4, whole_word_masking=True
    )
    groups = [[1, 2], [3, 4], [6, 7], [8]]  # tokens 11 12 | 13 14 || 20 21 | 22
    for seed in range(50):
        masked = masking.mask_tokens(
            rows["input_ids"], np.array([4]), np.array([3]), np.random.default_rng(seed),
            options, vocab, rows["word_starts"],
        )  # fmt: skip
        chosen = set(masked["masked_lm_positions"][0][masked["masked_lm_weights"][0] > 0])
        assert chosen == {p for g in groups if set(g) & chosen for p in g}
        assert len(chosen) <= 4  # round(0.4 * 10) = 4


# -- a synthetic corpus: words are runs of one character (or English words), space-separated ----


def _write_words_corpus(directory, rng, documents=150):
    """Documents of sentences of words; a word is one Hanzi repeated 1-4 times or an English
    word, never starting with the character the word before it ends with, so a row's words are
    its runs of one id (and "##" pieces)."""
    lines = []
    for _ in range(documents):
        previous = None
        for _ in range(rng.integers(2, 14)):
            words = []
            for _ in range(rng.integers(3, 16)):
                while True:
                    if rng.random() < 0.1:
                        word = str(rng.choice(list(ENGLISH)))
                    else:
                        word = str(rng.choice(HANZI)) * int(rng.integers(1, 5))
                    if previous is None or (word != previous and word[0] != previous[-1]):
                        break
                words.append(word)
                previous = word
            lines.append(" ".join(words))
        lines.append("")
    text = directory / "words.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = directory / "vocab.txt"
    pieces = sorted({p for word in ENGLISH.values() for p in word})
    vocab.write_text("".join(t + "\n" for t in SPECIALS + HANZI + pieces), encoding="utf-8")
    return str(text), str(vocab)


@pytest.fixture(scope="module")
def words_corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("words")
    text, vocab = _write_words_corpus(directory, np.random.default_rng(0))
    config = data_config_dict()
    config.update(
        input_files=text,
        vocab_file=vocab,
        data_dir=str(directory / "datasets"),
        validation_fraction=0.0,
        show_progress=False,
        max_seq_length=64,
        max_predictions_per_seq=10,
        whole_word_masking=True,
        num_workers=1,
    )
    return config


def _runs_of_one_id(vocab_file):
    subword = WordPieceTokenizer.from_vocab(vocab_file).subword_mask

    def starts(batch, row, original):
        new = np.ones(len(original), bool)
        new[1:] = (original[1:] != original[:-1]) & ~subword[original[1:]]
        for (a, _), (b, _) in [_segments(batch)[row]]:
            new[[a, b]] = True
        return new

    return starts


def _batches(config, num_epochs=3):
    return list(
        input_pipeline.make_pretraining_iterator(
            config, split="train", global_batch_size=32, seed=0, num_epochs=num_epochs
        )
    )


def test_segmented_words_are_masked_whole(words_corpus):
    config = words_corpus.copy_and_resolve_references()
    config.word_segmenter = "builtins:str.split"
    assert input_pipeline.prepare_data(config)["word_boundaries"]
    counts = word_statistics(_batches(config), _runs_of_one_id(config.vocab_file))
    assert counts["skipped"] == 0 and counts["rows"] > 1000
    words = _assert_hfl_semantics(counts)
    assert words > 3000
    assert counts["predicted"] <= counts["budget"]
    assert counts["predicted"] > 0.9 * counts["budget"]  # words of up to 4 pieces mostly fit


def test_without_word_boundaries_chinese_is_character_masking_and_says_so(words_corpus, caplog):
    """No segmenter: each Hanzi is its own word (runs get masked in part), and one warning."""
    assert not input_pipeline.prepare_data(words_corpus)["word_boundaries"]
    batches = _batches(words_corpus, num_epochs=1)
    _batches(words_corpus, num_epochs=1)  # a second iterator does not warn again
    warnings = [r.getMessage() for r in caplog.records if "word_segmenter=jieba" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "has no word boundaries" in warnings[0] and "character masking" in warnings[0]
    counts = word_statistics(batches, _runs_of_one_id(words_corpus.vocab_file))
    assert counts["partial"] > 100


def test_english_text_without_boundaries_does_not_warn(tmp_path, caplog):
    config = data_config_dict()
    config.update(data_dir=str(tmp_path), show_progress=False, whole_word_masking=True)
    input_pipeline.prepare_data(config)
    input_pipeline.make_example_chunks(config, split="validation", seed=0, num_epochs=1)
    assert "word_segmenter" not in caplog.text


# -- the Chinese corpus, segmented by jieba ------------------------------------------------------

SLICE_CHARS = 250_000
NGRAM = 6


@pytest.fixture(scope="module")
def jieba_dataset(shared_data, tmp_path_factory):
    pytest.importorskip("jieba")
    directory = tmp_path_factory.mktemp("zh")
    lines, size = [], 0
    with open(shared_data / "zh" / "corpus" / "pretrain.txt", encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            size += len(line)
            if size > SLICE_CHARS and not line.strip():
                break
    text = directory / "slice.txt"
    text.write_text("".join(lines), encoding="utf-8")
    vocab = directory / "vocab.txt"
    WordPieceTokenizer.train([str(text)], vocab_size=8000).save_vocab(vocab)
    config = data_config_dict()
    config.update(
        input_files=str(text),
        vocab_file=str(vocab),
        data_dir=str(directory / "datasets"),
        validation_fraction=0.0,
        word_segmenter="jieba",
        show_progress=False,
        whole_word_masking=True,
        num_workers=1,
    )
    info = input_pipeline.prepare_data(config)
    assert info["word_boundaries"] and info["segmenter_words"] > 100_000
    return config


def _locator(config):
    """row_word_starts for rows of this dataset: each segment found again in the documents."""
    prepared = input_pipeline.open_dataset(config)
    subword = prepared.tokenizer().subword_mask
    documents = list(prepared.data_source("train"))
    tokens = np.concatenate([d["tokens"] for d in documents])
    word_starts = np.concatenate([corpus.word_starts(d, subword) for d in documents]).astype(bool)
    index = {}
    for i in range(len(tokens) - NGRAM + 1):
        index.setdefault(tokens[i : i + NGRAM].tobytes(), []).append(i)

    def starts(batch, row, original):
        result = np.zeros(len(original), bool)
        for start, stop in _segments(batch)[row]:
            segment = original[start:stop]
            found = [
                word_starts[i : i + len(segment)]
                for i in index.get(segment[:NGRAM].tobytes(), [])
                if np.array_equal(tokens[i : i + len(segment)], segment)
            ]
            if len(segment) < NGRAM or not found or any((f != found[0]).any() for f in found):
                return None  # too short to find, or found with different words
            result[start:stop] = found[0]
            result[start] = True  # its first token starts a word, even if the cut split one
        return result

    return starts


def test_jieba_words_are_masked_whole_with_per_word_80_10_10(jieba_dataset):
    batches = _batches(jieba_dataset, num_epochs=2)
    counts = word_statistics(batches, _locator(jieba_dataset))
    assert counts["skipped"] < 0.1 * counts["rows"], counts
    words = _assert_hfl_semantics(counts)
    assert words > 25_000, counts
    for decision, share in (("mask", 0.8), ("keep", 0.1), ("random", 0.1)):
        assert abs(counts[decision] / words - share) < 0.01, (decision, counts)
    # The budget as configured: round(0.15 * tokens) per row (at most 20), nearly always filled.
    assert counts["predicted"] <= counts["budget"]
    assert counts["predicted"] > 0.97 * counts["budget"], counts
    assert abs(counts["predicted"] / counts["tokens"] - 0.15) < 0.01, counts
