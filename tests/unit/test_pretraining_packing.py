"""Pretraining packs several MLM+NSP examples per row.

Packed rows hold exactly the examples an unpacked run builds (same masks, per-example NSP,
masked positions offset into the row); on the same examples the model gives the same loss sums,
gradients and metrics packed or not; the pipeline's packed batches have bounded shapes, resume
exactly and hold the same examples per epoch as unpacked ones.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import demo_config, prepared_data_config, write_short_documents

from bert_jax.data import examples as pretraining
from bert_jax.data import input_pipeline, packed_examples
from bert_jax.errors import UserError
from bert_jax.model.modeling import BertConfig, BertForPreTraining
from bert_jax.planning import chips
from bert_jax.planning import planner as plan_lib
from bert_jax.planning.cli import format_plan
from bert_jax.pretraining.config import add_optimizer_defaults, vocab_size
from bert_jax.pretraining.step import (
    SUM_METRICS,
    batch_shapes,
    build_pretrainer,
    pretraining_forward,
    pretraining_sums,
)
from bert_jax.pretraining.train import evaluate
from bert_jax.training import sharding
from bert_jax.training.metrics import pretraining_flops_per_example

SUBWORDS = np.arange(64) % 3 == 2  # every third id a "##" piece, for whole-word masking
SUBWORDS[:4] = False
VOCAB = pretraining.Vocabulary(64, pad_id=0, cls_id=1, sep_id=2, mask_id=3, subword_mask=SUBWORDS)
SEQ, PER_ROW = 64, 4


def _max_row_budget(length: int, prob: float, cap: int, per_row: int) -> int:
    """The most masked-LM predictions any row of <= per_row examples of >= 5 tokens and
    <= length tokens in all can need, each with google's budget (the DP over all rows)."""
    n = np.arange(length + 1)
    budget = np.minimum(np.clip(np.rint(n * prob), 1, cap), n - 3)
    budget[:5] = -(10**9)  # an example has [CLS] A [SEP] B [SEP]: at least 5 tokens
    best = np.full(length + 1, -(10**9))
    best[0] = 0
    most = 0
    for _ in range(per_row):
        best = np.array(
            [max(best[used - n] + budget[n] for n in range(used + 1)) for used in range(length + 1)]
        )
        most = max(most, int(best.max()))
    return most


@pytest.mark.parametrize(
    "length, prob, cap, per_row",
    [(128, 0.15, 20, 16), (64, 0.15, 10, 4), (64, 0.05, 20, 8), (96, 0.2, 5, 3), (40, 0.5, 20, 8)],
)
def test_prediction_slots_hold_every_row(length, prob, cap, per_row):
    options = pretraining.ExampleOptions(
        max_seq_length=length, max_predictions_per_seq=cap, masked_lm_prob=prob
    )
    slots = packed_examples.predictions_per_row(options, per_row)
    needed = _max_row_budget(length, prob, cap, per_row)
    assert needed <= slots <= needed + per_row  # enough, and not far beyond the worst row


def _corpus(seed: int = 0, documents: int = 40):
    """Random short documents: (tokens, sentence_lengths, document_sizes)."""
    rs = np.random.RandomState(seed)
    sizes = rs.randint(1, 5, documents)
    lengths = rs.randint(2, 12, sizes.sum())
    tokens = rs.randint(4, VOCAB.size, lengths.sum()).astype(np.int32)
    return tokens, lengths, sizes


def _options(**changes):
    return pretraining.ExampleOptions(
        **{"max_seq_length": SEQ, "max_predictions_per_seq": 10, **changes}
    )


def _packed_and_plain(options, seed: int = 0, documents: int = 40):
    """The packed rows of a corpus and the same examples built one per row, in slot order."""
    tokens, lengths, sizes = _corpus(seed, documents)
    pairs = pretraining.pair_tokens(lengths, sizes, [seed, 0], options)
    slots = packed_examples.pack_pairs(pairs, [seed, 1], options, PER_ROW)
    source = pretraining.token_source(tokens, options, VOCAB)
    rows = packed_examples.build_packed_examples(source, pairs, slots, [seed, 2], options, VOCAB)
    plain = pretraining.build_examples(source, pairs[slots[slots >= 0]], [seed, 2], options, VOCAB)
    return rows, plain, slots


@pytest.mark.parametrize("whole_word_masking", [False, True])
def test_packed_rows_hold_exactly_the_unpacked_examples(whole_word_masking):
    options = _options(whole_word_masking=whole_word_masking)
    rows, plain, slots = _packed_and_plain(options)
    num_rows, per_row = slots.shape
    assert per_row == PER_ROW and len(plain["input_ids"]) == (slots >= 0).sum() > 2 * num_rows
    predictions = packed_examples.predictions_per_row(options, PER_ROW)
    for name, value in rows.items():  # bounded shapes: [R, L], [R, S] or [R, P]
        assert value.shape[0] == num_rows and value.shape[1] in (SEQ, PER_ROW, predictions), name
    back = packed_examples.unpack_examples(rows, options.max_predictions_per_seq, VOCAB.pad_id)
    for name in pretraining.EXAMPLE_FIELDS:
        np.testing.assert_array_equal(back[name], plain[name], err_msg=name)

    # The layout itself: each example starts with its [CLS], positions restart, segments count up.
    original = pretraining.original_ids(rows)
    real = rows["next_sentence_weights"] > 0
    r, s = np.nonzero(real)
    assert np.all(original[r, rows["cls_positions"][r, s]] == VOCAB.cls_id)
    assert np.all(rows["position_ids"][r, rows["cls_positions"][r, s]] == 0)
    assert np.all(rows["segment_ids"][r, rows["cls_positions"][r, s]] == s + 1)
    assert np.all(rows["next_sentence_labels"][~real] == 0)
    assert np.all(original[rows["segment_ids"] == 0] == VOCAB.pad_id)
    np.testing.assert_array_equal(rows["attention_mask"], rows["segment_ids"] > 0)
    # Masked positions point at tokens of the row (never specials or padding), ascending.
    w = rows["masked_lm_weights"] > 0
    row_of = np.nonzero(w)[0]
    at = original[row_of, rows["masked_lm_positions"][w]]
    np.testing.assert_array_equal(at, rows["masked_lm_ids"][w])
    assert not np.isin(at, [VOCAB.cls_id, VOCAB.sep_id, VOCAB.pad_id]).any()
    padded = np.where(w, rows["masked_lm_positions"], 10_000 + np.arange(w.shape[1]))
    assert np.all(np.diff(padded, axis=1) > 0)
    # Rows are full: best-fit decreasing over 40 documents' examples leaves little padding.
    assert rows["attention_mask"].mean() > 2 * plain["attention_mask"].mean()


def test_pack_examples_rejects_a_row_without_room_for_its_predictions():
    rows, plain, slots = _packed_and_plain(_options())
    most = int(rows["masked_lm_weights"].sum(1).max())
    local = np.full(slots.shape, -1)
    local[slots >= 0] = np.arange((slots >= 0).sum())
    with pytest.raises(ValueError, match="more than its"):
        packed_examples.pack_examples(plain, local, most - 1)


def test_max_sequences_per_row_below_one_is_a_user_error():
    config = ml_collections.ConfigDict(dict(packing=True, max_sequences_per_row=0))
    with pytest.raises(UserError, match="max_sequences_per_row is 0"):
        packed_examples.sequences_per_row(config)


# -- the model and the step on packed rows -------------------------------------------------------

MODEL = BertConfig.preset(
    "tiny",
    vocab_size=VOCAB.size,
    intermediate_size=256,
    max_position_embeddings=SEQ,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def test_packed_and_unpacked_give_the_same_sums():
    """The model (dropout off) on the same examples, packed into rows or one per row."""
    rows, plain, _ = _packed_and_plain(_options(), seed=3)
    model = BertForPreTraining(MODEL)
    params = model.init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))["params"]
    sums = jax.jit(lambda batch: pretraining_sums(pretraining_forward(model, params, batch), batch))
    plain_sums, packed_sums = sums(plain), sums(rows)
    assert float(packed_sums["nsp_count"]) == len(plain["input_ids"])
    assert float(packed_sums["real_tokens"]) == plain["attention_mask"].sum()
    assert float(packed_sums["mlm_weight"]) == plain["masked_lm_weights"].sum() > 50
    for key in SUM_METRICS:
        np.testing.assert_allclose(packed_sums[key], plain_sums[key], rtol=1e-5, err_msg=key)


def _step_config(packed: bool, rows: int, accum: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_train_steps, c.warmup_steps, c.batch_size, c.seed = 10, 0, rows, 0
    c.learning_rate, c.schedule = 1e-3, "bert"
    add_optimizer_defaults(c)
    c.grad_accum_steps = accum
    c.model = ml_collections.ConfigDict(MODEL.to_dict())
    c.data = ml_collections.ConfigDict(
        dict(
            max_seq_length=SEQ,
            max_predictions_per_seq=10,
            masked_lm_prob=0.15,
            short_seq_prob=0.1,
            whole_word_masking=False,
            balanced_nsp=True,
            packing=packed,
            max_sequences_per_row=PER_ROW,
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=2, fsdp=1, tensor=1))
    return c


def test_train_step_on_packed_rows_with_gradient_accumulation():
    """One step (2 devices, grad_accum_steps 2 on packed rows) normalises as the unpacked step
    on the same examples: the same summed metrics and gradient norm, the same update."""
    rows, plain, _ = _packed_and_plain(_options(), seed=5)
    examples = np.cumsum(rows["next_sentence_weights"].sum(1)).astype(int)
    used = next(r for r in range(4, 8) if examples[r - 1] % 2 == 0)  # even: 2 devices
    plain = {k: v[: examples[used - 1]] for k, v in plain.items()}
    rows = {k: np.concatenate([v[:used], np.zeros((8 - used, *v.shape[1:]), v.dtype)])
            for k, v in rows.items()}  # fmt: skip  # empty rows: no example, token or prediction
    results = []
    for packed, batch, accum in ((False, plain, 1), (True, rows, 2)):
        config = _step_config(packed, len(batch["input_ids"]), accum)
        mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
        with jax.set_mesh(mesh):
            trainer = build_pretrainer(config, mesh)
            state = trainer.init(jax.random.key(0))
            before = jax.device_get(state.params)
            state, metrics = trainer.train_step(
                state, trainer.shard_batch(batch), jax.random.key(1)
            )
            update = jax.tree.map(np.subtract, jax.device_get(state.params), before)
        results.append((jax.device_get(metrics), update))
    (plain_metrics, plain_update), (packed_metrics, packed_update) = results
    assert packed_metrics["nsp_count"] == len(plain["input_ids"])
    assert packed_metrics["learning_rate"] > 0
    for key in (*SUM_METRICS, "grad_norm"):
        np.testing.assert_allclose(packed_metrics[key], plain_metrics[key], rtol=1e-5, err_msg=key)
    flat_plain = np.concatenate([x.ravel() for x in jax.tree.leaves(plain_update)])
    flat_packed = np.concatenate([x.ravel() for x in jax.tree.leaves(packed_update)])
    cosine = flat_plain @ flat_packed / np.linalg.norm(flat_plain) / np.linalg.norm(flat_packed)
    assert cosine > 0.999


def test_planner_compiles_the_packed_step():
    """The planner's batch (shapes, shardings, bytes) and FLOPs follow the packed layout; two CPU
    devices stand in for a TPU slice."""
    config = _step_config(True, 8, 2)
    config.logical_axis_rules = [list(r) for r in sharding.DEFAULT_RULES]
    topology = plan_lib.Topology("cpu", chips.chip_by_name("v5e"), tuple(jax.devices()[:2]))
    plan = plan_lib.plan_pretraining(config, topology)
    assert not plan.error and plan.memory["temporaries"] > 0
    shapes = batch_shapes(config)
    assert shapes["next_sentence_labels"].shape == (8, PER_ROW)
    assert shapes["masked_lm_positions"].shape == (8, 9 + PER_ROW)  # floor(64 * 0.15) + S
    per_device = sum(x.size * x.dtype.itemsize for x in shapes.values()) // 2
    assert plan.memory["batch"] == per_device
    flops = pretraining_flops_per_example(MODEL, SEQ, 9 + PER_ROW)
    assert plan.model_flops_per_step == pytest.approx(8 * flops)
    assert f"packed rows (up to {PER_ROW} examples each)/s" in format_plan(plan)


# -- the pipeline ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    """A corpus of short documents: about three examples per row of 256."""
    folder = tmp_path_factory.mktemp("short_documents")
    return prepared_data_config(
        folder / "datasets", input_files=str(write_short_documents(folder / "short.txt")),
        documents_per_window=512, max_seq_length=256, max_predictions_per_seq=40,
    )  # fmt: skip


def _packed(data_config, **changes):
    config = data_config.copy_and_resolve_references()
    config.update(packing=True, max_sequences_per_row=PER_ROW, **changes)
    return config


def test_packed_batches_have_bounded_shapes(data_config):
    config = _packed(data_config)
    predictions = packed_examples.batch_predictions(config)
    assert predictions == min(PER_ROW * 40, 38 + PER_ROW)
    for split in ("train", "validation"):
        iterator = input_pipeline.make_pretraining_iterator(
            config, split=split, global_batch_size=8, seed=0
        )
        for _ in range(3):
            batch = next(iterator)
            assert sorted(batch) == sorted(input_pipeline.PACKED_FIELDS)
            for name in ("input_ids", "attention_mask", "token_type_ids"):
                assert batch[name].shape == (8, 256) and batch[name].dtype == np.int32
            for name in ("segment_ids", "position_ids"):
                assert batch[name].shape == (8, 256) and batch[name].dtype == np.int32
            for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
                assert batch[name].shape == (8, predictions)
            for name in ("next_sentence_labels", "next_sentence_weights", "cls_positions"):
                assert batch[name].shape == (8, PER_ROW)
            assert batch["next_sentence_weights"].sum() >= 16  # several examples per row
            assert batch["attention_mask"].mean() > 0.9
            assert batch["segment_ids"].max() <= PER_ROW


@pytest.mark.parametrize("split, share", [("train", (0, 1)), ("validation", (1, 2))])
def test_an_epoch_packed_holds_the_examples_of_an_epoch_unpacked(data_config, split, share):
    """The same examples (token for token), in training and in a process's share of the
    validation split; masks are drawn per chunk, so they differ."""

    def epoch_examples(config):
        index, count = share
        chunks = input_pipeline.make_example_chunks(
            config, split=split, seed=4, num_epochs=1, process_index=index, process_count=count
        )
        parts = [chunks[i] for i in range(len(chunks))]
        if config.packing:
            parts = [packed_examples.unpack_examples(p, 40) for p in parts]
        ids = np.concatenate([pretraining.original_ids(p) for p in parts])
        return ids[np.lexsort(ids.T[::-1])], len(chunks)

    plain, plain_chunks = epoch_examples(data_config)
    packed, packed_chunks = epoch_examples(_packed(data_config))
    assert packed_chunks == plain_chunks  # the same chunks per epoch: resume states agree
    np.testing.assert_array_equal(packed, plain)


def test_packed_iterator_resumes_exactly(data_config):
    config = _packed(data_config)

    def make():
        return input_pipeline.make_pretraining_iterator(
            config, split="train", global_batch_size=6, seed=1
        )

    iterator = make()
    for _ in range(5):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [next(iterator) for _ in range(4)]
    resumed = make()
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for name in input_pipeline.PACKED_FIELDS:
            np.testing.assert_array_equal(got[name], want[name])
    assert not np.array_equal(next(make())["input_ids"], expected[0]["input_ids"])


def test_packed_evaluation_in_eval_microbatches(data_config):
    """Packed held-out rows go through evaluate's eval_batch_size microbatches: the same 16
    rows give the same metrics as 8 steps of 2 rows or 2 steps of 8."""
    config = demo_config("test")
    config.data = _packed(data_config)
    config.model.max_position_embeddings = 256
    config.model.vocab_size = vocab_size(config.data.vocab_file)
    config.mesh.data = 2
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        params = pretrainer.init(jax.random.key(0)).params
    step = pretrainer.eval_step
    shapes = []

    def recording(params, batch):
        shapes.append({k: v.shape for k, v in batch.items()})
        return step(params, batch)

    pretrainer.eval_step = recording
    results = []
    for overrides in (
        dict(grad_accum_steps=4, eval_steps=8),
        dict(eval_batch_size=8, eval_steps=2),
    ):
        run = config.copy_and_resolve_references()
        run.update(overrides)
        with jax.set_mesh(mesh):
            results.append(evaluate(pretrainer, params, run))
    small, big = results
    assert small["eval_batches"] == 8 and big["eval_batches"] == 2
    assert [s["input_ids"] for s in shapes] == [(2, 256)] * 8 + [(8, 256)] * 2
    assert {s["next_sentence_labels"] for s in shapes} == {(2, PER_ROW), (8, PER_ROW)}
    for key in ("eval_loss", "eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"):
        assert small[key] == pytest.approx(big[key], rel=1e-5), key
