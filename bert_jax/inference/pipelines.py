"""Inference for notebooks and scripts: `pipeline(task, path)` -> a callable on a list of texts.

    fill = pipeline("fill-mask", "runs/demo")  # HF BERT dir or bert_jax pretraining workdir
    fill(["the [MASK] of the lord"], top_k=3)  # per text: {"token", "token_str", "score", ...}

Tasks: fill-mask, text-classification, token-classification (ner), question-answering,
sentence-embedding (feature-extraction). See docs/design/inference_pipelines.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax.core import meta

from bert_jax.checkpoints import pretrained
from bert_jax.data import packing
from bert_jax.errors import UserError
from bert_jax.finetuning import scores as metrics
from bert_jax.finetuning import tasks as task_registry
from bert_jax.finetuning.batches import bucket_length
from bert_jax.finetuning.tasks import features as tasks
from bert_jax.finetuning.tasks import squad, tagging
from bert_jax.finetuning.tasks.classification import Classification
from bert_jax.finetuning.tasks.multilabel import MultiLabel
from bert_jax.finetuning.tasks.qa import QuestionAnswering
from bert_jax.finetuning.tasks.readers import SentenceExample, TokenExample
from bert_jax.finetuning.tasks.tagging import Tagging
from bert_jax.model.modeling import BertForPreTraining, BertModel

TASKS = (
    "fill-mask",
    "text-classification",
    "token-classification",
    "ner",
    "question-answering",
    "sentence-embedding",
    "feature-extraction",
)
MASK_TEXT = "[MASK]"
_SEQUENCE_KEYS = ("input_ids", "token_type_ids", "attention_mask")
MAX_TEXTS_PER_ROW = 16
_CONSTRUCTOR_DEFAULT = object()  # a call argument left out: the pipeline's own default


def pipeline(task: str, path, *, vocab_file="", lowercase: bool = True, **options):
    """A ready inference callable for `task` from the model at `path`.

    Args:
        task: "fill-mask", "text-classification", "token-classification" (or "ner"),
            "question-answering", "sentence-embedding" (or "feature-extraction").
        path: a Hugging Face BERT directory or a bert_jax pretraining workdir (fill-mask,
            sentence-embedding), or for text-classification, token-classification and
            question-answering a workdir fine-tuned for the task or a transformers
            BertForSequenceClassification / -TokenClassification / -QuestionAnswering folder
            (sentence-embedding takes any of these too).
        vocab_file: only for a checkpoint without its own vocab.txt (e.g. some Hugging Face
            directories).
        lowercase: with vocab_file, whether the vocabulary is uncased.
        **options: batch_size (32), max_seq_length (the fine-tuning length, else the model's
            max_position_embeddings); fill-mask and text-classification also top_k, the default
            of their call's top_k (5; 1); question-answering also doc_stride (128),
            max_query_length (64), max_answer_length (30).

    Returns:
        A callable on a list of texts (see each pipeline's `__call__`): fill-mask gives top_k
        candidates per text, text-classification {"label", "score"} per text,
        token-classification a list of entities per text, question-answering {"answer"} per
        (question, context) pair, sentence-embedding a float32 array [n, hidden_size].

    Raises:
        UserError: an unknown task or option, a path that holds no loadable model, or a model
            fine-tuned for another task.
    """
    if task not in TASKS:
        raise UserError(f"unknown pipeline task {task!r}; choose one of {TASKS}")
    _check_options(task, options)
    info = pretrained.inspect_checkpoint(path)
    if task == "text-classification":
        return TextClassificationPipeline(pretrained.load_finetuned(path), **options)
    if task in ("token-classification", "ner"):
        return TokenClassificationPipeline(pretrained.load_finetuned(path), **options)
    if task == "question-answering":
        return QuestionAnsweringPipeline(pretrained.load_finetuned(path), **options)
    tokenizer = pretrained.load_tokenizer(info, vocab_file, lowercase)
    if task == "fill-mask":
        params = pretrained.load_pretraining_params(info, announce=False)
        return FillMaskPipeline(info, tokenizer, params, **options)
    return SentenceEmbeddingPipeline(info, tokenizer, **options)


def _check_options(task: str, options: dict) -> None:
    """A UserError naming the options `task`'s pipeline does not take, before anything loads."""
    kind = {
        "fill-mask": FillMaskPipeline,
        "text-classification": TextClassificationPipeline,
        "token-classification": TokenClassificationPipeline,
        "ner": TokenClassificationPipeline,
        "question-answering": QuestionAnsweringPipeline,
    }.get(task, SentenceEmbeddingPipeline)
    parameters = inspect.signature(kind).parameters.values()
    valid = ["vocab_file", "lowercase"] + [
        p.name for p in parameters if p.default is not inspect.Parameter.empty
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(
            f"the {task} pipeline has no option {', '.join(unknown)}; its options: "
            + ", ".join(valid)
        )


def _batches(arrays: dict[str, np.ndarray], batch_size: int, max_seq_length: int):
    """(texts, arrays of batch_size rows): texts sorted by length, token arrays cut to the
    batch's length bucket; rows past the texts repeat the batch's first text."""
    lengths = arrays["attention_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])])
        length = bucket_length(int(lengths[rows].max()), max_seq_length)
        batch = {k: v[padded] for k, v in arrays.items()}
        yield rows, batch | {k: batch[k][:, :length] for k in _SEQUENCE_KEYS}


def _packed_batches(arrays: dict[str, np.ndarray], rows: int, max_seq_length: int):
    """(slots [rows, S], packed rows) holding every text once, up to MAX_TEXTS_PER_ROW texts per
    row of the length bucket of the longest text (see data/packing.py)."""
    lengths = arrays["attention_mask"].sum(axis=1)
    if not len(lengths):
        return
    length = bucket_length(int(lengths.max()), max_seq_length)
    slots = packing.pack(lengths, length, MAX_TEXTS_PER_ROW)
    slots = np.concatenate([slots, np.full((-len(slots) % rows, slots.shape[1]), -1)])
    tokens = {k: arrays[k] for k in ("input_ids", "token_type_ids")}
    for start in range(0, len(slots), rows):
        chunk = slots[start : start + rows]
        yield chunk, packing.packed_rows(tokens, lengths, chunk, length)


def _sentence_arrays(texts: Sequence, tokenizer, max_seq_length: int) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] (B [SEP]) ids for strings or (a, b) pairs, as fine-tuning builds them."""
    if isinstance(texts, str):
        raise UserError("pipelines take a list of texts, not one string: wrap it in [...]")
    examples = []
    for index, text in enumerate(texts):
        pair = isinstance(text, tuple | list)
        if (
            pair
            and len(text) != 2
            or not all(isinstance(t, str) for t in (text if pair else [text]))
        ):
            raise UserError(f"input {index} is neither a string nor a pair of strings: {text!r}")
        a, b = (text[0], text[1]) if pair else (text, None)
        examples.append(SentenceExample(str(index), a, b, None, {}, f"input {index}"))
    arrays, truncated = tasks.featurise_sentences(
        examples, tokenizer, max_seq_length, label_to_id=None, labeled=False
    )
    if truncated:
        logging.warning("%d of %d inputs were cut to %d word pieces", truncated, len(texts),
                        max_seq_length)  # fmt: skip
    arrays.pop("labels")
    return arrays


class SentenceEmbeddingPipeline:
    """Mean of the last hidden layer over each text's tokens ([CLS] and [SEP] included, as
    sentence-transformers pools): texts -> float32 [n, H]. Texts are packed, batch_size rows of
    up to MAX_TEXTS_PER_ROW texts per model call."""

    def __init__(self, info, tokenizer, batch_size: int = 32, max_seq_length: int | None = None):
        pretrained.check_vocab_fits(tokenizer, info.bert_config, "the tokenizer")
        self.tokenizer = tokenizer
        self.hidden_size = info.bert_config.hidden_size
        self.batch_size = int(batch_size)
        task_length = (info.task_info or {}).get("max_seq_length")
        self.max_seq_length = int(
            max_seq_length or task_length or info.bert_config.max_position_embeddings
        )
        model = BertModel(info.bert_config)
        ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
        abstract = jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)["params"]
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), meta.unbox(abstract)
        )
        self.params = pretrained.load_encoder(info, abstract, announce=False)

        def embed(params, batch):
            sequence, _ = model.apply(
                {"params": params}, batch["input_ids"], batch["token_type_ids"],
                segment_ids=batch["segment_ids"], position_ids=batch["position_ids"],
            )  # fmt: skip
            texts = jnp.arange(1, batch["cls_positions"].shape[1] + 1)
            mine = (batch["segment_ids"][:, None, :] == texts[None, :, None]).astype(jnp.float32)
            total = jnp.einsum("bst,bth->bsh", mine, sequence.astype(jnp.float32))  # [B, S, H]
            return total / jnp.maximum(jnp.sum(mine, axis=2), 1.0)[..., None]  # [B, S, H]

        self._embed = jax.jit(embed)

    def __call__(self, texts: Sequence, normalize: bool = False) -> np.ndarray:
        arrays = _sentence_arrays(texts, self.tokenizer, self.max_seq_length)
        out = np.zeros((len(texts), self.hidden_size), np.float32)
        for slots, batch in _packed_batches(arrays, self.batch_size, self.max_seq_length):
            packing.unpack_sequences(jax.device_get(self._embed(self.params, batch)), slots, out)
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class TextClassificationPipeline:
    """A fine-tuned classification, regression or multilabel model: texts or pairs -> labels and
    scores (softmax; one sigmoid per label for multilabel). Texts are packed, batch_size rows of
    up to MAX_TEXTS_PER_ROW texts per model call."""

    def __init__(self, model: pretrained.FinetunedModel, batch_size: int = 32,
                 max_seq_length: int | None = None, top_k: int | None = 1):  # fmt: skip
        task = task_registry.get(model.kind)
        if not isinstance(task, Classification | MultiLabel):
            raise UserError(
                f"{model.info.path} was fine-tuned for {model.kind}, not text classification"
            )
        self.model, self.regression = model, not task.uses_label_list  # a score, no labels
        multilabel = isinstance(task, MultiLabel)
        self.top_k = top_k
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length or model.info.task_info["max_seq_length"])
        task_model = task_registry.model_for(model.info.task_info, model.info.bert_config)

        def scores(params, batch):
            logits = task_model.apply(
                {"params": params},
                batch["input_ids"],
                batch["token_type_ids"],
                **{k: batch[k] for k in ("segment_ids", "position_ids", "cls_positions")},
            )  # fmt: skip  [B, S, C]
            if self.regression:
                return logits[..., 0]
            return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, -1)

        self._scores = jax.jit(scores)

    @property
    def labels(self) -> list[str] | None:
        return self.model.label_list

    def __call__(self, texts: Sequence, top_k=_CONSTRUCTOR_DEFAULT) -> list:
        """Per input: {"label", "score"} (top_k=1), else a list of the top_k (None = all) by score;
        regression models give {"score": predicted value}. top_k defaults to the constructor's."""
        top_k = self.top_k if top_k is _CONSTRUCTOR_DEFAULT else top_k
        arrays = _sentence_arrays(texts, self.model.tokenizer, self.max_seq_length)
        width = () if self.regression else (len(self.labels),)
        values = np.zeros((len(texts), *width), np.float32)
        for slots, batch in _packed_batches(arrays, self.batch_size, self.max_seq_length):
            scores = jax.device_get(self._scores(self.model.params, batch))
            packing.unpack_sequences(scores, slots, values)
        if self.regression:
            return [{"score": float(v)} for v in values]
        results = []
        for probabilities in values:
            order = np.argsort(-probabilities, kind="stable")[: top_k or len(probabilities)]
            ranked = [{"label": self.labels[i], "score": float(probabilities[i])} for i in order]
            results.append(ranked[0] if top_k == 1 else ranked)
        return results


class TokenClassificationPipeline:
    """A fine-tuned token_classification workdir (NER, tagging): texts -> entities or tags.

    Each text is split into words as the tokenizer splits it before WordPiece (whitespace,
    punctuation, and every CJK character on its own, as in character-level Chinese CoNLL
    files); each word is tagged on its first word piece, as in fine-tuning, and texts longer than
    max_seq_length continue in further windows (each text still decoded as one sequence). With
    BIO / IOBES tags the words are grouped into entities as the dev evaluation groups them
    (seqeval's rules).
    """

    def __init__(self, model: pretrained.FinetunedModel, batch_size: int = 32,
                 max_seq_length: int | None = None):  # fmt: skip
        if not isinstance(task_registry.get(model.kind), Tagging):
            raise UserError(
                f"{model.info.path} was fine-tuned for {model.kind}, not token classification"
            )
        self.model = model
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length or model.info.task_info["max_seq_length"])
        self.is_entities = metrics.is_bio_tagset(model.label_list)
        self.constrained = self.is_entities and bool(
            model.info.task_info.get("constrained_decoding", False)
        )
        crf = bool(model.info.task_info.get("crf", False))
        self.crf = jax.device_get(model.params["crf"]) if crf else None  # learned tag scores
        task_model = task_registry.model_for(model.info.task_info, model.info.bert_config)

        def log_probabilities(params, input_ids, token_type_ids, attention_mask):
            logits = task_model.apply({"params": params}, input_ids, token_type_ids, attention_mask)
            logits = logits[0] if crf else logits  # a CRF's emissions
            return jax.nn.log_softmax(logits.astype(jnp.float32), -1)  # [B, L, C]

        self._log_probabilities = jax.jit(log_probabilities)

    def _words(self, text: str) -> list[tuple[int, int]]:
        """[start, end) character spans of the words of `text`: a word piece that is not a "##"
        continuation starts a word."""
        ids, offsets = self.model.tokenizer.encode_with_offsets(text)
        spans = []
        for token_id, (start, end) in zip(ids, offsets, strict=True):
            if spans and self.model.tokenizer.is_subword(token_id):
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        return spans

    def __call__(self, texts: Sequence[str]) -> list[list[dict]]:
        """Per text, with BIO / IOBES tags: its entities, each {"entity_group", "word", "start",
        "end", "score"} (character span [start, end) of the text; score = the mean probability of
        the entity's word tags, decoded as the fine-tuning evaluation decodes them: with
        constrained_decoding, the best tag sequence the scheme allows; with crf, under its learned
        scores too); other tag sets: every word {"word", "tag", "start", "end", "score"}."""
        if isinstance(texts, str):
            raise UserError("pipelines take a list of texts, not one string: wrap it in [...]")
        if not texts:
            return []
        spans, examples = [], []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"input {index} is not a string: {text!r}")
            spans.append(self._words(text))
            words = [text[start:end] for start, end in spans[-1]] or [""]
            examples.append(TokenExample(str(index), words, None, f"input {index}"))
        arrays, info, _ = tagging.featurise_tokens(
            examples, self.model.tokenizer, self.max_seq_length, {}, labeled=False
        )
        num_words = np.array([len(e.words) for e in examples], np.int64)
        first_word = np.cumsum(num_words) - num_words
        word_log_probs = np.zeros((num_words.sum(), len(self.model.label_list)), np.float32)
        for rows, batch in _batches(arrays, self.batch_size, self.max_seq_length):
            log_probabilities = np.asarray(
                self._log_probabilities(
                    self.model.params,
                    batch["input_ids"],
                    batch["token_type_ids"],
                    batch["attention_mask"],
                )
            )[: len(rows)]
            word_index = info["word_index"][rows, : log_probabilities.shape[1]]  # the bucket
            tagging.scatter_word_scores(
                log_probabilities, info["example_index"][rows], word_index, first_word,
                word_log_probs,
            )  # fmt: skip
        # Each text once, across its windows, as the fine-tuning evaluation decodes.
        best = tagging.sentence_tag_ids(
            word_log_probs, num_words, self.model.label_list, self.constrained, self.crf
        )
        probabilities = np.exp(np.take_along_axis(word_log_probs, best[:, None], axis=1)[:, 0])
        tag_ids = np.split(best, first_word[1:])
        scores = np.split(probabilities, first_word[1:])
        labels = self.model.label_list
        results = []
        for text, text_spans, ids, word_scores in zip(texts, spans, tag_ids, scores, strict=True):
            tags = [labels[i] for i in ids[: len(text_spans)]]
            if not self.is_entities:
                results.append([
                    {"word": text[a:b], "tag": tag, "start": a, "end": b, "score": float(p)}
                    for (a, b), tag, p in zip(text_spans, tags, word_scores, strict=False)
                ])  # fmt: skip
                continue
            entities = []
            for entity_type, first, last in metrics.bio_entities(tags):
                start, end = text_spans[first][0], text_spans[last][1]
                entities.append({
                    "entity_group": entity_type,
                    "word": text[start:end],
                    "start": start,
                    "end": end,
                    "score": float(np.mean(word_scores[first : last + 1])),
                })  # fmt: skip
            results.append(entities)
        return results


class QuestionAnsweringPipeline:
    """A fine-tuned squad workdir or a transformers BertForQuestionAnswering folder: (question,
    context) pairs -> the answer span of each context, decoded as the fine-tuning evaluation
    decodes (windows of doc_stride over long contexts, the best start + end logit)."""

    def __init__(self, model: pretrained.FinetunedModel, batch_size: int = 32,
                 max_seq_length: int | None = None, doc_stride: int = 128,
                 max_query_length: int = 64, max_answer_length: int = 30):  # fmt: skip
        if not isinstance(task_registry.get(model.kind), QuestionAnswering):
            raise UserError(
                f"{model.info.path} was fine-tuned for {model.kind}, not question answering"
            )
        self.model = model
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length or model.info.task_info["max_seq_length"])
        self.doc_stride, self.max_query_length = int(doc_stride), int(max_query_length)
        self.max_answer_length = int(max_answer_length)
        task_model = task_registry.model_for(model.info.task_info, model.info.bert_config)

        def logits(params, input_ids, token_type_ids, attention_mask):
            return task_model.apply({"params": params}, input_ids, token_type_ids, attention_mask)

        self._logits = jax.jit(logits)

    def windows(self, pairs: Sequence) -> tuple[list, dict, dict, np.ndarray, np.ndarray]:
        """(examples, arrays, feature_info, start_logits, end_logits) of the windows the pairs
        are cut into: arrays and logits [n, max_seq_length] (logits 0 past each window)."""
        if isinstance(pairs, str) or any(
            not isinstance(p, tuple | list) or len(p) != 2 or not all(isinstance(t, str) for t in p)
            for p in pairs
        ):
            raise UserError("question-answering takes a list of (question, context) pairs")
        examples = [
            squad.SquadExample(str(i), question, context, origin=f"input {i}")
            for i, (question, context) in enumerate(pairs)
        ]
        arrays, info, _ = squad.featurise_squad(
            examples, self.model.tokenizer, self.max_seq_length, self.doc_stride,
            self.max_query_length, training=False,
        )  # fmt: skip
        start = np.zeros(arrays["input_ids"].shape, np.float32)
        end = np.zeros_like(start)
        inputs = {k: arrays[k] for k in _SEQUENCE_KEYS}
        for rows, batch in _batches(inputs, self.batch_size, self.max_seq_length):
            starts, ends = jax.device_get(
                self._logits(self.model.params, *(batch[k] for k in _SEQUENCE_KEYS))
            )
            start[rows, : starts.shape[1]] = starts[: len(rows)]
            end[rows, : ends.shape[1]] = ends[: len(rows)]
        return examples, arrays, info, start, end

    def __call__(self, pairs: Sequence) -> list[dict]:
        """Per (question, context): {"answer": the text cut from the context ("" if none)}."""
        examples, _, info, start, end = self.windows(pairs)
        answers = squad.decode_squad(
            start, end, examples, info, max_answer_length=self.max_answer_length
        )
        return [{"answer": answers[e.qas_id]} for e in examples]


class FillMaskPipeline:
    """Masked-LM predictions at every [MASK] of each text."""

    def __init__(self, info, tokenizer, params, batch_size: int = 32,
                 max_seq_length: int | None = None, top_k: int = 5):  # fmt: skip
        pretrained.check_vocab_fits(tokenizer, info.bert_config, "the tokenizer")
        self.tokenizer = tokenizer
        self.params = params
        self.batch_size = int(batch_size)
        self.max_seq_length = int(max_seq_length or info.bert_config.max_position_embeddings)
        self.top_k = int(top_k)
        model = BertForPreTraining(info.bert_config)
        vocab_size = tokenizer.vocab_size  # the table may have more rows than the vocab has tokens

        def top_tokens(params, input_ids, token_type_ids, attention_mask, positions, k):
            output = model.apply(
                {"params": params}, input_ids, token_type_ids, attention_mask, positions
            )
            logits = output.mlm_logits[..., :vocab_size]
            probabilities = jax.nn.softmax(logits, axis=-1)  # [B, P, V]
            return jax.lax.top_k(probabilities, k)

        self._top_tokens = jax.jit(top_tokens, static_argnums=(5,))

    def _encode(self, index: int, text: str) -> list[int]:
        if not isinstance(text, str):
            raise UserError(f"input {index} is not a string: {text!r}")
        if MASK_TEXT not in text:
            raise UserError(f"input {index} has no {MASK_TEXT}: {text!r}")
        ids = [self.tokenizer.cls_id, *self.tokenizer.encode_masked(text, MASK_TEXT)]
        ids.append(self.tokenizer.sep_id)
        if len(ids) > self.max_seq_length:
            raise UserError(
                f"input {index} has {len(ids)} word pieces with [CLS] and [SEP], more than "
                f"max_seq_length {self.max_seq_length}; shorten it"
            )
        return ids

    def _candidates(self, probabilities, token_ids) -> list[dict]:
        tokens = self.tokenizer.convert_ids_to_tokens(token_ids)
        return [
            {"token": int(i), "token_str": t, "score": float(p)}
            for i, t, p in zip(token_ids, tokens, probabilities, strict=True)
        ]

    def __call__(self, texts: Sequence[str], top_k: int | None = None) -> list:
        """Per text with one [MASK]: top_k candidates, each {"token", "token_str", "score",
        "sequence"}; with several [MASK]s: one such list (without "sequence") per [MASK]."""
        if isinstance(texts, str):
            raise UserError("pipelines take a list of texts, not one string: wrap it in [...]")
        k = int(top_k or self.top_k)
        rows = [self._encode(i, text) for i, text in enumerate(texts)]
        n = len(rows)
        input_ids = np.full((n, self.max_seq_length), self.tokenizer.pad_id, np.int32)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = ids
        mask_positions = [np.flatnonzero(input_ids[i] == self.tokenizer.mask_id) for i in range(n)]
        arrays = {
            "input_ids": input_ids,
            "token_type_ids": np.zeros_like(input_ids),
            "attention_mask": (input_ids != self.tokenizer.pad_id).astype(np.int32),
            "positions": np.zeros((n, max(len(p) for p in mask_positions)), np.int32),
        }
        for i, positions in enumerate(mask_positions):
            arrays["positions"][i, : len(positions)] = positions
        results = [None] * n
        for batch_rows, batch in _batches(arrays, self.batch_size, self.max_seq_length):
            probabilities, token_ids = jax.device_get(
                self._top_tokens(
                    self.params,
                    batch["input_ids"],
                    batch["token_type_ids"],
                    batch["attention_mask"],
                    batch["positions"],
                    k,
                )  # fmt: skip
            )
            for row, index in enumerate(batch_rows):
                per_mask = [
                    self._candidates(probabilities[row, m], token_ids[row, m])
                    for m in range(len(mask_positions[index]))
                ]
                results[index] = per_mask
        for index, per_mask in enumerate(results):
            if len(per_mask) == 1:
                for candidate in per_mask[0]:
                    # the piece as text: "##" (WordPiece) or a byte-level BPE's space dropped
                    word = self.tokenizer.decode([candidate["token"]]).strip().removeprefix("##")
                    candidate["sequence"] = texts[index].replace(MASK_TEXT, word, 1)
                results[index] = per_mask[0]
        return results
