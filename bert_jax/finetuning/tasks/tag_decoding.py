"""Tag sequences that obey their chunk scheme: constrained Viterbi decoding for BIO / IOBES tags.

Per sentence, the tag sequence with the highest total log-probability among those the scheme
allows (AllenNLP's `allowed_transitions` + Viterbi); a CRF adds its learned transition scores.
`scheme_breaks` counts gold sentences that break the rules (IOB1 data), which turns them off.

    ids = viterbi(log_probs, lengths, transition_rules(labels))  # [n, W, C], [n] -> [n, W]

See docs/design/finetuning.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from bert_jax.finetuning.scores import split_tag

_CONTINUE = ("I", "M", "E")  # prefixes that continue the entity of the word before
_OPEN = ("B", "I", "M")  # prefixes after which an IOBES / BMES entity must go on
_FORBIDDEN = -1e30  # log-space score of a transition the scheme rules out


@dataclasses.dataclass(frozen=True)
class TransitionRules:
    """Which tags may start or end a sentence and follow each other (bool arrays over C tags)."""

    start: np.ndarray  # [C]
    end: np.ndarray  # [C]
    allowed: np.ndarray  # [C, C]: allowed[previous, next]


def transition_rules(label_list: Sequence[str]) -> TransitionRules:
    """The scheme's rules for a BIO / IOBES / BMES tag set (metrics.is_bio_tagset); IOBES rules
    apply when some tag is E-X or S-X."""
    split = [split_tag(tag) for tag in label_list]  # (prefix, type) as seqeval reads them
    closes = any(prefix in ("E", "S") for prefix, _ in split)
    start = np.array([prefix not in _CONTINUE for prefix, _ in split])
    end = np.array([not (closes and prefix in _OPEN) for prefix, _ in split])
    allowed = np.ones((len(split), len(split)), bool)
    for i, (prev, prev_type) in enumerate(split):
        for j, (tag, tag_type) in enumerate(split):
            if tag in _CONTINUE:
                allowed[i, j] = prev in _OPEN and prev_type == tag_type
            elif closes and prev in _OPEN:
                allowed[i, j] = False
    return TransitionRules(start=start, end=end, allowed=allowed)


def no_rules(num_labels: int) -> TransitionRules:
    """Every tag may start, end and follow every tag (a CRF's own scores decide)."""
    every = np.ones(num_labels, bool)
    return TransitionRules(start=every, end=every, allowed=np.ones((num_labels,) * 2, bool))


def breaks_rules(tags: Sequence[str], rules: TransitionRules, index: dict[str, int]) -> bool:
    """Whether one sentence's tags break the rules (index: tag -> position in the label list)."""
    ids = [index[tag] for tag in tags]
    if not ids:
        return False
    if not rules.start[ids[0]] or not rules.end[ids[-1]]:
        return True
    return any(not rules.allowed[a, b] for a, b in zip(ids, ids[1:], strict=False))


def scheme_breaks(sentences: Sequence[Sequence[str]], label_list: Sequence[str]) -> int:
    """How many sentences' gold tags break the scheme's rules (IOB1 data, or sloppy labels)."""
    rules = transition_rules(label_list)
    index = {tag: i for i, tag in enumerate(label_list)}
    return sum(breaks_rules(tags, rules, index) for tags in sentences)


def viterbi(
    log_probs: np.ndarray, lengths: np.ndarray, rules: TransitionRules, learned=None
) -> np.ndarray:
    """The best allowed tag ids [n, W] for n sentences of word scores [n, W, C] (the first
    lengths[i] words of sentence i are real; ids past them are 0). learned: a CRF's
    {'transitions' [C, C], 'start' [C], 'end' [C]} added to the scores (bert_jax.model.crf)."""
    log_probs = np.asarray(log_probs, np.float64)
    n, width, num_labels = log_probs.shape
    lengths = np.asarray(lengths)
    ids = np.zeros((n, width), np.int64)
    if width == 0 or n == 0:
        return ids
    if learned is None:
        learned = {"transitions": np.zeros((num_labels,) * 2), "start": 0.0, "end": 0.0}
    learned = {k: np.asarray(v, np.float64) for k, v in learned.items()}
    transitions = np.where(rules.allowed, learned["transitions"], _FORBIDDEN)  # [C, C]
    last_penalty = np.where(rules.end, learned["end"], _FORBIDDEN)  # [C]
    best = log_probs[:, 0] + np.where(rules.start, learned["start"], _FORBIDDEN)  # [n, C]
    best = np.where((lengths == 1)[:, None], best + last_penalty, best)
    backpointers = np.zeros((n, width, best.shape[1]), np.int64)
    for t in range(1, width):
        candidates = best[:, :, None] + transitions  # [n, C_prev, C]
        previous = candidates.argmax(axis=1)  # [n, C]
        score = np.take_along_axis(candidates, previous[:, None], axis=1)[:, 0] + log_probs[:, t]
        score = np.where((lengths == t + 1)[:, None], score + last_penalty, score)
        live = (t < lengths)[:, None]
        best = np.where(live, score, best)
        backpointers[:, t] = previous
    tag = best.argmax(axis=1)  # [n]
    for t in range(width - 1, -1, -1):
        live = t < lengths
        ids[live, t] = tag[live]
        if t:
            tag = np.where(live, backpointers[np.arange(n), t, tag], tag)
    return ids
