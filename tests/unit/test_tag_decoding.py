"""Constrained tag decoding (eval.tag_decoding): the best sequence a BIO / IOBES scheme allows."""

import itertools

import numpy as np
import pytest

from bert_jax.finetuning.tasks import tag_decoding
from bert_jax.finetuning.tasks.tag_decoding import breaks_rules, transition_rules, viterbi

IOB2 = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
IOBES = ["B-X", "E-X", "I-X", "O", "S-X", "B-Y", "E-Y", "I-Y", "S-Y"]


@pytest.mark.parametrize("labels", [IOB2, IOBES], ids=["iob2", "iobes"])
def test_viterbi_is_the_best_allowed_sequence(labels):
    """Against every tag sequence of up to 4 words: the allowed one with the highest sum."""
    rules = transition_rules(labels)
    index = {tag: i for i, tag in enumerate(labels)}
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(len(labels)), size=(60, 4)))
    lengths = rng.integers(1, 5, 60)
    ids = viterbi(log_probs, lengths, rules)
    for sentence, length in enumerate(lengths):
        allowed = [
            path
            for path in itertools.product(range(len(labels)), repeat=int(length))
            if not breaks_rules([labels[i] for i in path], rules, index)
        ]
        best = max(allowed, key=lambda p: sum(log_probs[sentence, t, i] for t, i in enumerate(p)))
        assert tuple(ids[sentence, :length]) == best
        assert not ids[sentence, length:].any()


def test_rules_of_each_scheme():
    rules = transition_rules(IOB2)
    index = {tag: i for i, tag in enumerate(IOB2)}
    assert not breaks_rules(["B-PER", "I-PER", "O", "B-LOC"], rules, index)
    assert breaks_rules(["O", "I-PER"], rules, index)  # I- opens nothing in IOB2
    assert breaks_rules(["I-PER"], rules, index)
    assert breaks_rules(["B-LOC", "I-PER"], rules, index)  # the type changes inside an entity
    assert not breaks_rules(["B-PER"], rules, index)  # IOB2: B- may end a sentence
    rules = transition_rules(IOBES)
    index = {tag: i for i, tag in enumerate(IOBES)}
    assert not breaks_rules(["B-X", "I-X", "E-X", "S-Y", "O"], rules, index)
    assert breaks_rules(["B-X", "O"], rules, index)  # IOBES: an entity closes with E-
    assert breaks_rules(["B-X"], rules, index)
    assert breaks_rules(["S-X", "E-X"], rules, index)
    assert tag_decoding.scheme_breaks([["O", "I-PER"], ["B-PER"], []], IOB2) == 1  # IOB1 data


def test_viterbi_adds_a_crfs_learned_scores():
    """With a CRF's start / transition / end scores, the best allowed sequence under their sum;
    scores that make B-PER -> I-PER cheap and B-PER -> O dear turn a lone B-PER into an entity
    of two words."""
    rules = transition_rules(IOB2)
    index = {tag: i for i, tag in enumerate(IOB2)}
    rng = np.random.default_rng(1)
    learned = {
        "transitions": rng.normal(size=(5, 5)),
        "start": rng.normal(size=5),
        "end": rng.normal(size=5),
    }
    log_probs = np.log(rng.dirichlet(np.ones(5), size=(40, 4)))
    lengths = rng.integers(1, 5, 40)
    ids = viterbi(log_probs, lengths, rules, learned)

    def score(sentence, path):
        total = learned["start"][path[0]] + learned["end"][path[-1]]
        total += sum(log_probs[sentence, t, i] for t, i in enumerate(path))
        pairs = zip(path, path[1:], strict=False)
        return total + sum(learned["transitions"][a, b] for a, b in pairs)

    for sentence, length in enumerate(lengths):
        allowed = [
            path
            for path in itertools.product(range(5), repeat=int(length))
            if not breaks_rules([IOB2[i] for i in path], rules, index)
        ]
        assert tuple(ids[sentence, :length]) == max(allowed, key=lambda p: score(sentence, p))

    b_per, i_per, o = index["B-PER"], index["I-PER"], index["O"]
    words = np.log(np.full((1, 2, 5), 0.01))
    words[0, 0, b_per], words[0, 1, o], words[0, 1, i_per] = np.log(0.9), np.log(0.6), np.log(0.3)
    assert [IOB2[i] for i in viterbi(words, np.array([2]), rules)[0]] == ["B-PER", "O"]
    pull = np.zeros((5, 5))
    pull[b_per, i_per], pull[b_per, o] = 2.0, -2.0
    learned = {"transitions": pull, "start": np.zeros(5), "end": np.zeros(5)}
    assert [IOB2[i] for i in viterbi(words, np.array([2]), rules, learned)[0]] == [
        "B-PER",
        "I-PER",
    ]
    # Without the scheme's rules a CRF alone decides (IOB1 data): O -> I-PER is then possible.
    no_rules = tag_decoding.no_rules(5)
    words[0, 0, o], words[0, 0, b_per], words[0, 1, i_per] = np.log(0.9), np.log(0.05), 0.0
    assert [IOB2[i] for i in viterbi(words, np.array([2]), no_rules)[0]] == ["O", "I-PER"]
    assert [IOB2[i] for i in viterbi(words, np.array([2]), rules)[0]] != ["O", "I-PER"]
