"""MLM + NSP examples: google-research/bert statistics on KJV, and the Grain pipeline contract."""

import json
import random

import numpy as np
import pytest

from bert_jax.data import corpus, input_pipeline, masking, packed_examples
from bert_jax.data import examples as pretraining
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.pretraining.config import data_config_dict

# google-research/bert create_pretraining_data.py on kjv.txt (bert-base-uncased vocab,
# max_seq_length 128, max_predictions_per_seq 20, masked_lm_prob 0.15, short_seq_prob 0.1,
# dupe_factor 5, random_seed 12345): 54,851 instances, 6,468,047 tokens.
REFERENCE_MEAN_TOKENS = 117.92
# Share of random-next labels the reference produces on kjv.txt (its single-sentence chunks are
# always paired with a random segment); measured with the same settings over two seeds.
REFERENCE_RANDOM_NEXT = 0.56
PASSES = 4
CHUNK = 64


@pytest.fixture(scope="module")
def kjv(shared_data):
    tokenizer = WordPieceTokenizer.from_vocab(shared_data / "vocab" / "bert-base-uncased-vocab.txt")
    documents, _ = corpus.read_corpus(
        [str(shared_data / "corpora" / "kjv.txt")], tokenizer, show_progress=False
    )
    return tokenizer, documents


def _chunks(documents):
    """(tokens, sentence_lengths, document_sizes) per chunk of CHUNK documents."""
    sentence_ends = np.cumsum(documents.document_sizes)
    token_ends = np.concatenate([[0], np.cumsum(documents.sentence_lengths)])
    for first in range(0, len(documents.document_sizes), CHUNK):
        sizes = documents.document_sizes[first : first + CHUNK]
        s0 = sentence_ends[first] - sizes[0]
        s1 = s0 + sizes.sum()
        yield (
            documents.tokens[token_ends[s0] : token_ends[s1]],
            documents.sentence_lengths[s0:s1],
            sizes,
        )


def _packed_examples(chunk, seed, options, vocab):
    """`create_examples`, but built as packed rows (16 per row at most) and unpacked again."""
    tokens, lengths, sizes = chunk
    pairs = pretraining.pair_tokens(lengths, sizes, [*seed, 0], options)
    slots = packed_examples.pack_pairs(pairs, [*seed, 2], options, 16)
    source = pretraining.token_source(tokens, options, vocab)
    rows = packed_examples.build_packed_examples(source, pairs, slots, [*seed, 1], options, vocab)
    return packed_examples.unpack_examples(rows, options.max_predictions_per_seq, vocab.pad_id)


def _examples(kjv, packed=False, **options):
    tokenizer, documents = kjv
    options = pretraining.ExampleOptions(**options)
    vocab = pretraining.Vocabulary.from_tokenizer(tokenizer)
    make = _packed_examples if packed else pretraining.create_examples
    parts = [
        make(chunk, [seed, i], options, vocab)
        if packed
        else make(*chunk, [seed, i], options, vocab)
        for seed in range(PASSES)
        for i, chunk in enumerate(_chunks(documents))
    ]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


# The statistics hold for examples one per row and for examples packed several per row.
LAYOUTS = dict(params=[False, True], ids=["one_per_row", "packed"])


@pytest.fixture(scope="module", **LAYOUTS)
def examples(kjv, request):
    return _examples(kjv, packed=request.param)


@pytest.fixture(scope="module", **LAYOUTS)
def whole_word_examples(kjv, request):
    return _examples(kjv, packed=request.param, whole_word_masking=True)


def test_random_next_fraction_is_one_half(examples):
    assert len(examples["input_ids"]) > 40_000
    assert abs(examples["next_sentence_labels"].mean() - 0.5) < 0.01


def test_reference_rule_keeps_the_reference_imbalance(kjv):
    labels = _examples(kjv, balanced_nsp=False)["next_sentence_labels"]
    assert abs(labels.mean() - REFERENCE_RANDOM_NEXT) < 0.015


def test_mean_tokens_per_example_matches_reference(examples):
    mean = examples["attention_mask"].sum(1).mean()
    assert abs(mean / REFERENCE_MEAN_TOKENS - 1) < 0.02, mean


def test_prediction_count_follows_reference_formula(examples):
    num_tokens = examples["attention_mask"].sum(1)
    predictions = examples["masked_lm_weights"].sum(1)
    expected = np.minimum(20, np.maximum(1, np.round(num_tokens * 0.15)))
    np.testing.assert_array_equal(predictions, expected)
    maskable = (num_tokens - 3).sum()
    assert 0.15 <= predictions.sum() / maskable < 0.16
    assert abs(predictions.sum() / num_tokens.sum() - 0.15) < 0.003


def test_mask_random_keep_split(examples, kjv):
    tokenizer, _ = kjv
    weights = examples["masked_lm_weights"] > 0
    rows = np.nonzero(weights)[0]
    current = examples["input_ids"][rows, examples["masked_lm_positions"][weights]]
    labels = examples["masked_lm_ids"][weights]
    masked = np.mean(current == tokenizer.mask_id)
    kept = np.mean(current == labels)
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01
    assert abs(1 - masked - kept - 0.1) < 0.01


def test_special_tokens_are_never_masked(examples, kjv):
    tokenizer, _ = kjv
    original = pretraining.original_ids(examples)
    weights = examples["masked_lm_weights"] > 0
    assert np.all(original[:, 0] == tokenizer.cls_id)
    labels = examples["masked_lm_ids"][weights]
    assert not np.isin(labels, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]).any()
    positions = examples["masked_lm_positions"]
    padded = np.where(weights, positions, 1000 + np.arange(positions.shape[1]))
    assert np.all(np.diff(padded, axis=1) > 0)  # Ascending and unique.
    assert np.all(positions[~weights] == 0) and np.all(examples["masked_lm_ids"][~weights] == 0)


def test_layout_of_segments(examples, kjv):
    tokenizer, _ = kjv
    original = pretraining.original_ids(examples)
    length = examples["attention_mask"].sum(1)
    sep = original == tokenizer.sep_id
    assert np.all(sep.sum(1) == 2)
    assert np.all(original[np.arange(len(length)), length - 1] == tokenizer.sep_id)
    types = examples["token_type_ids"]
    first_sep = np.argmax(sep, axis=1)
    columns = np.arange(original.shape[1])
    np.testing.assert_array_equal(
        types, ((columns > first_sep[:, None]) & (columns < length[:, None])).astype(np.int32)
    )
    assert np.all(original[examples["attention_mask"] == 0] == tokenizer.pad_id)
    assert np.all(first_sep >= 2) and np.all(length - first_sep >= 3)  # A and B non-empty.


def test_short_target_fraction(kjv):
    _, documents = kjv
    options = pretraining.ExampleOptions()
    short = [
        pretraining.plan_segments(lengths, sizes, random.Random(seed * 100 + i), options)
        for seed in range(PASSES)
        for i, (_, lengths, sizes) in enumerate(_chunks(documents))
    ]
    fraction = np.concatenate([plan.short_target for plan in short]).mean()
    assert abs(fraction - 0.1) < 0.015


def test_segments_partition_documents_with_the_reference_rule(kjv):
    """A segments and actual-next B segments tile each document; unused sentences are put back."""
    _, documents = kjv
    options = pretraining.ExampleOptions(balanced_nsp=False)
    for i, (_, lengths, sizes) in enumerate(_chunks(documents)):
        plan = pretraining.plan_segments(lengths, sizes, random.Random(i), options)
        spans = list(zip(plan.a_start, plan.a_end, strict=True))
        actual = ~plan.is_random_next
        spans += list(zip(plan.b_start[actual], plan.b_end[actual], strict=True))
        spans.sort()
        starts, ends = np.array(spans).T
        assert starts[0] == 0 and ends[-1] == sizes.sum()
        np.testing.assert_array_equal(starts[1:], ends[:-1])
        doc_of = np.repeat(np.arange(len(sizes)), sizes)
        random_b = plan.is_random_next
        assert np.all(doc_of[plan.b_start[random_b]] != doc_of[plan.a_start[random_b]])
        assert np.all(doc_of[plan.b_end[random_b] - 1] == doc_of[plan.b_start[random_b]])


def test_truncation_matches_the_sequential_rule():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 200, 5000)
    b = rng.integers(1, 200, 5000)
    a_front, a_kept, b_front, b_kept = pretraining.truncate_pairs(a, b, 125, rng)
    for i in range(len(a)):
        la, lb = int(a[i]), int(b[i])
        while la + lb > 125:  # google-research/bert truncate_seq_pair, counting only.
            if la > lb:
                la -= 1
            else:
                lb -= 1
        assert (a_kept[i], b_kept[i]) == (la, lb)
    assert np.all((a_front >= 0) & (a_front <= a - a_kept) & (b_front <= b - b_kept))
    removed = (a - a_kept).sum() + (b - b_kept).sum()
    assert abs((a_front.sum() + b_front.sum()) / removed - 0.5) < 0.01


def test_whole_word_masking_never_splits_a_word(whole_word_examples, kjv):
    tokenizer, _ = kjv
    batch = whole_word_examples
    original = pretraining.original_ids(batch)
    subword = tokenizer.subword_mask[original] & (original != tokenizer.sep_id)
    masked = np.zeros(original.shape, bool)
    rows, cols = np.nonzero(batch["masked_lm_weights"])
    masked[rows, batch["masked_lm_positions"][rows, cols]] = True
    special = np.isin(original, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])
    # A continuation piece is masked exactly when the piece before it is (within a segment).
    glued = subword[:, 1:] & ~special[:, :-1]
    assert glued.sum() > 10_000
    np.testing.assert_array_equal(masked[:, 1:][glued], masked[:, :-1][glued])
    # One 80/10/10 decision per word: a masked continuation piece shows [MASK] iff its head does.
    both = glued & masked[:, 1:]
    is_mask = batch["input_ids"] == tokenizer.mask_id
    assert both.sum() > 1000
    # (A random replacement is itself [MASK] once in vocab_size draws: a rare disagreement.)
    disagree = np.sum(is_mask[:, 1:][both] != is_mask[:, :-1][both])
    assert disagree <= 3, disagree  # per-piece draws would disagree on about a third
    predictions = batch["masked_lm_weights"].sum(1)
    budget = np.minimum(20, np.round(batch["attention_mask"].sum(1) * 0.15))
    assert np.all(predictions <= budget) and predictions.mean() > 0.97 * budget.mean()
    assert abs(batch["next_sentence_labels"].mean() - 0.5) < 0.01


def test_examples_are_a_function_of_the_seed(kjv):
    tokenizer, documents = kjv
    options = pretraining.ExampleOptions()
    vocab = pretraining.Vocabulary.from_tokenizer(tokenizer)
    chunk = next(_chunks(documents))
    first = pretraining.create_examples(*chunk, [7, 0], options, vocab)
    again = pretraining.create_examples(*chunk, [7, 0], options, vocab)
    other = pretraining.create_examples(*chunk, [8, 0], options, vocab)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["masked_lm_positions"], other["masked_lm_positions"])


def test_assemble_and_mask_a_known_pair():
    vocab = pretraining.Vocabulary(size=50, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    tokens = np.arange(10, 30, dtype=np.int32)
    rows = pretraining.assemble(
        tokens, np.array([0]), np.array([3]), np.array([10]), np.array([2]), 10, vocab
    )
    np.testing.assert_array_equal(rows["input_ids"][0], [1, 10, 11, 12, 2, 20, 21, 2, 0, 0])
    np.testing.assert_array_equal(rows["token_type_ids"][0], [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows["attention_mask"][0], [1] * 8 + [0] * 2)
    options = pretraining.ExampleOptions(max_seq_length=10, max_predictions_per_seq=12)
    masked = masking.mask_tokens(
        rows["input_ids"], np.array([3]), np.array([2]), np.random.default_rng(0), options, vocab
    )
    assert masked["masked_lm_positions"].shape == (1, 12)  # Padded past max_seq_length.
    assert masked["masked_lm_weights"].sum() == 1  # max(1, round(8 * 0.15)).
    assert masked["masked_lm_positions"][0, 0] in (1, 2, 3, 5, 6)


# -- the Grain pipeline over the bundled corpus ---------------------------------------------------


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    config = data_config_dict()
    config.data_dir = str(tmp_path_factory.mktemp("datasets"))
    config.show_progress = False
    config.documents_per_chunk = 16
    config.documents_per_window = 256
    config.max_seq_length = 64
    config.max_predictions_per_seq = 10
    info = input_pipeline.prepare_data(config)
    assert info["documents"] == 1189 and info["validation_documents"] == 56  # hash-drawn: ~5%
    return config


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(batches, others):
    assert len(batches) == len(others)
    for batch, other in zip(batches, others, strict=True):
        for name in input_pipeline.BATCH_FIELDS:
            np.testing.assert_array_equal(batch[name], other[name])


def test_batches_have_the_promised_fields(data_config):
    for split in ("train", "validation"):
        batch = next(
            input_pipeline.make_pretraining_iterator(
                data_config, split=split, global_batch_size=8, seed=0
            )
        )
        assert sorted(batch) == sorted(input_pipeline.BATCH_FIELDS)
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            assert batch[name].shape == (8, 64) and batch[name].dtype == np.int32
        for name in ("masked_lm_positions", "masked_lm_ids"):
            assert batch[name].shape == (8, 10) and batch[name].dtype == np.int32
        assert batch["masked_lm_weights"].dtype == np.float32
        assert batch["next_sentence_labels"].shape == (8,)
        assert batch["next_sentence_labels"].dtype == np.int32


def test_same_seed_same_batches(data_config):
    make = lambda seed: input_pipeline.make_pretraining_iterator(  # noqa: E731
        data_config, split="train", global_batch_size=16, seed=seed
    )
    _assert_same(_take(make(3), 5), _take(make(3), 5))
    assert not np.array_equal(next(make(3))["input_ids"], next(make(4))["input_ids"])


def test_state_restores_the_exact_position(data_config):
    iterator = input_pipeline.make_pretraining_iterator(
        data_config, split="train", global_batch_size=24, seed=1
    )
    _take(iterator, 7)  # Stop in the middle of a chunk.
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 6)
    resumed = input_pipeline.make_pretraining_iterator(
        data_config, split="train", global_batch_size=24, seed=1
    )
    resumed.set_state(state)
    _assert_same(expected, _take(resumed, 6))


def test_validation_is_finite_and_each_process_builds_only_its_rows(data_config, monkeypatch):
    """Each process reads its own share of the held-out documents and batches its own
    rows, instead of building every global batch to keep 1/P of it."""

    def batches(index, count):
        iterator = input_pipeline.make_pretraining_iterator(
            data_config,
            split="validation",
            global_batch_size=16,
            seed=5,
            process_index=index,
            process_count=count,
        )
        return list(iterator)

    whole = batches(0, 1)
    assert len(whole) > 10
    _assert_same(whole, batches(0, 1))

    read = []
    original = input_pipeline._ChunkExamples._read
    recording = lambda self, keys: read.extend(keys) or original(self, keys)  # noqa: E731
    monkeypatch.setattr(input_pipeline._ChunkExamples, "_read", recording)
    shares = []
    for index in range(2):
        read.clear()
        shares.append(batches(index, 2))
        mine = set(input_pipeline.process_documents(56, index, 2).tolist())  # 56 held out
        assert set(read) == mine  # every document of its share, nothing of the other's
        assert all(b["input_ids"].shape == (8, 64) for b in shares[-1])  # its half of each batch
    rows = 8 * (len(shares[0]) + len(shares[1]))
    assert abs(rows - 16 * len(whole)) <= 3 * 16  # as many examples, less the remainders


def test_train_processes_read_disjoint_documents(data_config):
    shares = [set(input_pipeline.process_documents(1130, i, 3).tolist()) for i in range(3)]
    assert sum(map(len, shares)) == 1130 and len(set.union(*shares)) == 1130
    chunks = input_pipeline.make_example_chunks(
        data_config, split="train", seed=0, process_index=2, process_count=3, num_epochs=1
    )
    windows = [188, 189]  # 377 documents in windows of at most 256
    assert len(chunks) == sum(-(-w // data_config.documents_per_chunk) for w in windows)
    batch = next(
        input_pipeline.make_pretraining_iterator(
            data_config, split="train", global_batch_size=12, seed=0, process_index=2,
            process_count=3,
        )
    )  # fmt: skip
    assert batch["input_ids"].shape == (4, 64)


@pytest.mark.parametrize("dynamic", [False, True])
def test_static_masking_repeats_every_dupe_factor_epochs(data_config, dynamic):
    config = data_config.copy_and_resolve_references()
    config.update(
        dynamic_masking=dynamic, dupe_factor=2, documents_per_window=400, documents_per_chunk=400
    )
    chunks = input_pipeline.make_example_chunks(config, split="train", seed=0, num_epochs=5)
    per_epoch = len(chunks) // 5
    assert per_epoch == 3  # windows of 376 or 377 documents, one chunk each
    same = lambda a, b: np.array_equal(chunks[a]["input_ids"], chunks[b]["input_ids"])  # noqa: E731
    assert not same(0, per_epoch)  # Epoch 1 differs from epoch 0.
    assert same(1, 2 * per_epoch + 1) != dynamic  # Epoch 2 repeats epoch 0 only when static.
    assert same(per_epoch + 2, 3 * per_epoch + 2) != dynamic


def test_worker_processes_give_the_same_batches(data_config):
    config = data_config.copy_and_resolve_references()
    config.worker_count = 1
    with_worker = input_pipeline.make_pretraining_iterator(
        config, split="train", global_batch_size=16, seed=2
    )
    batches = _take(with_worker, 4)
    state = with_worker.get_state()
    later = _take(with_worker, 2)
    with_worker.close()
    inline = input_pipeline.make_pretraining_iterator(
        data_config, split="train", global_batch_size=16, seed=2
    )
    _assert_same(batches, _take(inline, 4))
    resumed = input_pipeline.make_pretraining_iterator(
        config, split="train", global_batch_size=16, seed=2
    )
    resumed.set_state(state)
    _assert_same(later, _take(resumed, 2))
    resumed.close()


def test_bad_requests_raise_user_errors(data_config):
    with pytest.raises(UserError, match="unknown split"):
        input_pipeline.make_pretraining_iterator(
            data_config, split="test", global_batch_size=8, seed=0
        )
    with pytest.raises(UserError, match="not divisible"):
        input_pipeline.make_pretraining_iterator(
            data_config, split="train", global_batch_size=10, seed=0, process_count=4
        )
