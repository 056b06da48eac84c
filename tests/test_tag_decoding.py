"""Constrained tag decoding (eval.tag_decoding): the best sequence a BIO / IOBES scheme allows."""

import itertools

import numpy as np
import pytest

from bert_jax.eval import tag_decoding
from bert_jax.eval.tag_decoding import breaks_rules, transition_rules, viterbi

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
