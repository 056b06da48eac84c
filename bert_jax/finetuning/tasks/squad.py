"""Extractive QA in SQuAD v1.1 form: reading, windowed featurisation and n-best span decoding.

Contexts are tokenised once with character offsets into the original text, so a predicted token
span maps straight back to the exact original characters (accents, case and odd whitespace kept),
the way Hugging Face's fast-tokenizer pipeline does it; google-research/bert run_squad reaches the
same result with its whitespace-token alignment and get_final_text heuristics.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import tqdm
from absl import logging

from bert_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question on one context; answers are empty for an unlabeled (test) question."""

    qas_id: str
    question: str
    context: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    title: str = ""
    origin: str = ""  # where it came from, for error messages


def _require(condition: bool, path: pathlib.Path, where: str, what: str) -> None:
    if not condition:
        raise UserError(f"{path}: {where}: {what} (expected SQuAD v1.1 JSON)")


def read_squad_json(path: pathlib.Path, labeled: bool) -> tuple[list[SquadExample], int]:
    """Reads a SQuAD v1.1 file: {"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}.

    With labeled=True (train/dev) a question without answers (SQuAD v2 "is_impossible") cannot
    be trained or scored: it is skipped and counted. Returns (examples, number skipped).
    """
    if not path.is_file():
        raise UserError(f"{path}: file not found; check the task.*_file setting")
    try:
        with open(path, encoding="utf-8-sig") as f:
            document = json.load(f)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from error
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    _require(isinstance(document, dict), path, "top level", "not a JSON object")
    articles = document.get("data")
    _require(isinstance(articles, list), path, "top level", 'no "data" list')

    examples, seen_ids, skipped = [], set(), 0
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        _require(isinstance(article, dict), path, where, "not an object")
        paragraphs = article.get("paragraphs")
        _require(isinstance(paragraphs, list), path, where, 'no "paragraphs" list')
        title = str(article.get("title", ""))
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            _require(isinstance(paragraph, dict), path, where, "not an object")
            context = paragraph.get("context")
            _require(isinstance(context, str), path, where, 'no "context" string')
            qas = paragraph.get("qas")
            _require(isinstance(qas, list), path, where, 'no "qas" list')
            for q, qa in enumerate(qas):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                _require(isinstance(qa, dict), path, where, "not an object")
                qas_id, question = qa.get("id"), qa.get("question")
                _require(isinstance(qas_id, str | int), path, where, 'no "id"')
                _require(isinstance(question, str), path, where, 'no "question" string')
                qas_id = str(qas_id)
                _require(qas_id not in seen_ids, path, where, f"duplicate question id {qas_id!r}")
                seen_ids.add(qas_id)
                answers = qa.get("answers", [])
                _require(isinstance(answers, list), path, where, '"answers" is not a list')
                texts, starts = [], []
                for n, answer in enumerate(answers):
                    ok = (
                        isinstance(answer, dict)
                        and isinstance(answer.get("text"), str)
                        and isinstance(answer.get("answer_start"), int)
                    )
                    _require(ok, path, f"{where}.answers[{n}]", 'needs "text" and "answer_start"')
                    texts.append(answer["text"])
                    starts.append(answer["answer_start"])
                if labeled and not texts:
                    skipped += 1
                    continue
                examples.append(
                    SquadExample(
                        qas_id,
                        question,
                        context,
                        tuple(texts),
                        tuple(starts),
                        title,
                        origin=f"{path}: {where} (id {qas_id})",
                    )
                )
    if skipped:
        logging.warning(
            "%s: skipped %d questions without answers (SQuAD v1.1 needs one)", path, skipped
        )
    return examples, skipped


def _answer_token_span(example: SquadExample, offsets: np.ndarray) -> tuple[int, int] | None:
    """(first, last) context token of the first answer, or None when it cannot be aligned."""
    if not example.answers:
        return None
    text, char_start = example.answers[0], example.answer_starts[0]
    char_end = char_start + len(text)
    if char_start < 0 or example.context[char_start:char_end] != text:
        return None
    # Surrounding whitespace in an answer belongs to no token.
    char_start += len(text) - len(text.lstrip())
    char_end -= len(text) - len(text.rstrip())
    if not len(offsets) or char_end <= char_start:
        return None
    starts = np.flatnonzero(offsets[:, 1] > char_start)
    ends = np.flatnonzero(offsets[:, 0] < char_end)
    if not len(starts) or not len(ends) or starts[0] > ends[-1]:
        return None
    return int(starts[0]), int(ends[-1])


def _windows(num_tokens: int, window_length: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) windows over the context tokens, each start doc_stride after the last."""
    windows, start = [], 0
    while True:
        length = min(window_length, num_tokens - start)
        windows.append((start, length))
        if start + length >= num_tokens:
            return windows
        start += min(length, doc_stride)


def _max_context_window(num_tokens: int, windows: list[tuple[int, int]]) -> np.ndarray:
    """[num_tokens] index of the window where each token has the most context on both sides.

    Score = min(tokens to the left, tokens to the right) + 0.01 * window length, as in
    google-research/bert; a token's span prediction is only trusted from that window.
    """
    best_score = np.full(num_tokens, -np.inf)
    best_window = np.zeros(num_tokens, dtype=np.int64)
    for index, (start, length) in enumerate(windows):
        positions = np.arange(start, start + length)
        score = np.minimum(positions - start, start + length - 1 - positions) + 0.01 * length
        better = score > best_score[positions]
        best_score[positions[better]] = score[better]
        best_window[positions[better]] = index
    return best_window


def featurise_squad(
    examples: list[SquadExample],
    tokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    training: bool,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Cuts every context into windows: [CLS] question [SEP] context window [SEP] [PAD]...

    Returns (arrays, feature_info, stats); n is the number of windows (features), L max_seq_length:
      arrays: input_ids, token_type_ids, attention_mask [n, L] int32; start_positions,
        end_positions [n] int32, the answer's first/last token, 0 ([CLS]) when the window does
        not hold the whole answer or the question is unlabeled.
      feature_info: example_index [n] int32; token_offsets [n, L, 2] int32, each context token's
        [start, end) characters in the example's context, -1 elsewhere; max_context [n, L] bool.
    With training=True, questions whose answer text is not found at answer_start get no features
    (counted in stats["unaligned_answers"] and logged).
    """
    window_length = max_seq_length - 3
    question_ids = _encode_batch(tokenizer, [e.question for e in examples])
    question_ids = [ids[:max_query_length] for ids in question_ids]
    longest_question = max((len(ids) for ids in question_ids), default=0)
    if window_length - longest_question < 1:
        raise UserError(
            f"max_seq_length={max_seq_length} leaves no room for the context after a "
            f"{longest_question}-token question: raise max_seq_length or lower max_query_length"
        )
    rows, segment_b_starts, answer_positions = [], [], []
    owners, all_offsets, all_max_context = [], [], []
    last_context, context_ids, offsets = None, [], np.zeros((0, 2), np.int32)
    unaligned = 0
    progress = tqdm.tqdm(examples, desc="SQuAD windows", leave=False, mininterval=5)
    for example_index, (example, q_ids) in enumerate(zip(progress, question_ids, strict=True)):
        if example.context != last_context:  # questions on one paragraph come together
            last_context = example.context
            context_ids, offsets = tokenizer.encode_with_offsets(example.context)
            offsets = np.asarray(offsets, np.int32).reshape(-1, 2)
        answer_span = _answer_token_span(example, offsets)
        if example.answers and answer_span is None:
            unaligned += 1
            if training:
                continue
        windows = _windows(len(context_ids), window_length - len(q_ids), doc_stride)
        best_window = _max_context_window(len(context_ids), windows)
        prefix = [tokenizer.cls_id, *q_ids, tokenizer.sep_id]
        context_positions = slice(len(prefix), len(prefix) + window_length)
        for window_index, (start, length) in enumerate(windows):
            window = slice(start, start + length)
            rows.append(prefix + context_ids[window] + [tokenizer.sep_id])
            segment_b_starts.append(len(prefix))
            owners.append(example_index)
            token_offsets = np.full((max_seq_length, 2), -1, np.int32)
            token_offsets[context_positions][:length] = offsets[window]
            all_offsets.append(token_offsets)
            max_context = np.zeros(max_seq_length, bool)
            max_context[context_positions][:length] = best_window[window] == window_index
            all_max_context.append(max_context)
            inside = answer_span is not None and start <= answer_span[0]
            inside = inside and answer_span[1] < start + length
            shift = len(prefix) - start
            answer_positions.append(
                (answer_span[0] + shift, answer_span[1] + shift) if inside else (0, 0)
            )
    if unaligned:
        logging.warning(
            "%d questions: the answer text is not at answer_start in the context%s",
            unaligned,
            " (skipped for training)" if training else "",
        )

    n = len(rows)
    input_ids = np.full((n, max_seq_length), tokenizer.pad_id, np.int32)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = ids
    positions = np.arange(max_seq_length)
    lengths = np.array([len(ids) for ids in rows], np.int32).reshape(n, 1)
    attention_mask = positions < lengths
    segment_b = positions >= np.array(segment_b_starts, np.int32).reshape(n, 1)
    answer_positions = np.array(answer_positions, np.int32).reshape(n, 2)
    arrays = {
        "input_ids": input_ids,
        "token_type_ids": (segment_b & attention_mask).astype(np.int32),
        "attention_mask": attention_mask.astype(np.int32),
        "start_positions": answer_positions[:, 0],
        "end_positions": answer_positions[:, 1],
    }
    feature_info = {
        "example_index": np.array(owners, np.int32).reshape(n),
        "token_offsets": np.stack(all_offsets).reshape(n, max_seq_length, 2),
        "max_context": np.stack(all_max_context).reshape(n, max_seq_length),
    }
    stats = {"num_features": n, "unaligned_answers": unaligned}
    return arrays, feature_info, stats


def _encode_batch(tokenizer, texts: list[str], chunk: int = 2048) -> list[list[int]]:
    encoded = []
    for start in range(0, len(texts), chunk):
        encoded.extend(tokenizer.encode_batch(texts[start : start + chunk]))
    return encoded


def decode_squad(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    examples: list[SquadExample],
    feature_info: dict[str, np.ndarray],
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Best answer text per question id from [n, L] start/end logits of featurise_squad's windows.

    For every window of a question, the n_best_size highest start and end logits among context
    tokens form candidate spans; a span is valid when end >= start, it is at most
    max_answer_length tokens and its start token has its maximal context in this window. The
    highest start + end logit over all windows wins, and its text is cut from the original
    context by character offsets. A question with no valid span gets "".
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    example_index = feature_info["example_index"]
    expected = (len(example_index), feature_info["token_offsets"].shape[1])
    for name, logits in (("start_logits", start_logits), ("end_logits", end_logits)):
        if logits.shape != expected:
            raise ValueError(f"{name} has shape {logits.shape}, expected {expected} (windows, L)")
    best: dict[int, tuple[float, str]] = {}
    for feature in range(len(example_index)):
        offsets = feature_info["token_offsets"][feature]
        in_context = offsets[:, 0] >= 0
        start_ok = in_context & feature_info["max_context"][feature]
        if not start_ok.any():
            continue
        starts = _top_indices(np.where(start_ok, start_logits[feature], -np.inf), n_best_size)
        ends = _top_indices(np.where(in_context, end_logits[feature], -np.inf), n_best_size)
        span_length = ends[None, :] - starts[:, None] + 1
        valid = (span_length >= 1) & (span_length <= max_answer_length)
        if not valid.any():
            continue
        scores = start_logits[feature][starts][:, None] + end_logits[feature][ends][None, :]
        s, e = np.unravel_index(np.argmax(np.where(valid, scores, -np.inf)), scores.shape)
        score = float(scores[s, e])
        example = int(example_index[feature])
        if example not in best or score > best[example][0]:
            context = examples[example].context
            best[example] = (score, context[offsets[starts[s], 0] : offsets[ends[e], 1]])
    return {
        example.qas_id: best[index][1] if index in best else ""
        for index, example in enumerate(examples)
    }


def _top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest finite values, largest first."""
    order = np.argsort(-values, kind="stable")[:k]
    return order[np.isfinite(values[order])]
