"""data.eval_masked_lm_prob: the held-out split is masked at its own rate (ModernBERT trains at
30% and evaluates at 15%), the training stream keeps masked_lm_prob, and the prediction budget
(checked by the config, packed rows' width) covers both rates."""

import numpy as np
import pytest
from conftest import prepared_data_config

from bert_jax.data import input_pipeline, packed_examples
from bert_jax.errors import UserError
from bert_jax.pretraining.config import (
    pretraining_config,
    validate_pretraining_config,
)


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    return prepared_data_config(
        tmp_path_factory.mktemp("datasets"), documents_per_window=256, max_seq_length=64,
        max_predictions_per_seq=19, next_sentence_prediction=False, masked_lm_prob=0.3,
        eval_masked_lm_prob=0.15,
    )  # fmt: skip


def _budget(chunk, rate, cap):
    tokens = chunk["attention_mask"].sum(1)
    return np.minimum(np.maximum(1, np.rint(tokens * rate)), cap)


def test_validation_is_masked_at_the_eval_rate_and_training_at_its_own(data_config):
    train = input_pipeline.make_example_chunks(data_config, split="train", seed=0)[0]
    held_out = input_pipeline.make_example_chunks(data_config, split="validation", seed=0)[0]
    np.testing.assert_array_equal(train["masked_lm_weights"].sum(1), _budget(train, 0.3, 19))
    masked = held_out["masked_lm_weights"].sum(1)
    np.testing.assert_array_equal(masked, _budget(held_out, 0.15, 19))
    assert 0.14 < masked.sum() / held_out["attention_mask"].sum() < 0.16
    default = data_config.copy_and_resolve_references()
    default.eval_masked_lm_prob = 0.0  # 0: the training rate, as before the key
    same = input_pipeline.make_example_chunks(default, split="validation", seed=0)[0]
    np.testing.assert_array_equal(same["masked_lm_weights"].sum(1), _budget(same, 0.3, 19))


def test_packed_rows_have_room_for_the_higher_eval_rate(data_config):
    config = data_config.copy_and_resolve_references()
    config.packing, config.max_sequences_per_row = True, 4
    config.masked_lm_prob, config.eval_masked_lm_prob = 0.15, 0.3
    assert packed_examples.batch_predictions(config) == 19 + 4  # floor(64 x 0.3) + S
    config.eval_masked_lm_prob = 0.0
    assert packed_examples.batch_predictions(config) == 9 + 4  # floor(64 x 0.15) + S


def test_the_config_checks_the_budget_of_the_eval_rate():
    config = pretraining_config("tiny")
    config.data.max_seq_length = 64
    config.data.max_predictions_per_seq = 10  # round(64 x 0.15)
    validate_pretraining_config(config, num_devices=1, check_files=False)
    config.data.eval_masked_lm_prob = 0.3
    with pytest.raises(UserError, match="max_predictions_per_seq 10 .* eval_masked_lm_prob 0.3 "):
        validate_pretraining_config(config, num_devices=1, check_files=False)
    config.data.max_predictions_per_seq = 19
    validate_pretraining_config(config, num_devices=1, check_files=False)
