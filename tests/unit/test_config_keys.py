"""Every shipped config file and mode keeps its keys and defaults (tests/data/shipped_configs.json,
dumped before the config keys moved into pretraining/config.py and finetuning/config.py), and
every key of both config kinds is a BertConfig field or listed in docs/configs.md."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

import pytest
from flax import traverse_util

REPO = pathlib.Path(__file__).resolve().parents[2]
EXPECTED = REPO / "tests" / "data" / "shipped_configs.json"
MODES = {
    "configs/bert_base.py": ("phase1", "phase2"),
    "configs/bert_large.py": ("phase1", "phase2"),
    "configs/bert_large_lamb.py": ("phase1", "phase2"),
    "configs/demo.py": ("demo", "test"),
    "configs/modern_demo.py": ("demo", "test"),
    "configs/modernbert_base.py": ("phase1", "phase2"),
    "configs/modernbert_large.py": ("phase1", "phase2"),
    "configs/zh_small.py": ("phase1", "phase2", "test"),
    "configs/zh_modern.py": ("phase1", "phase2", "test"),
    "configs/finetune/classification.py": ("default", "test"),
    "configs/finetune/regression.py": ("default", "test"),
    "configs/finetune/squad.py": ("default", "test"),
    "configs/finetune/token_classification.py": ("default", "test"),
}


def flattened(config_file: str, mode: str) -> dict:
    """The config of `config_file:mode`, flattened to dotted keys, as JSON values; paths inside
    the checkout (the bundled corpus and vocabulary) relative to it."""
    spec = importlib.util.spec_from_file_location("shipped_config", REPO / config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = traverse_util.flatten_dict(module.get_config(mode).to_dict(), sep=".")
    root = str(REPO / "bert_jax")
    text = json.dumps(values, sort_keys=True).replace(root, "<bert_jax>")
    return json.loads(text)


def all_configs() -> dict:
    return {f"{f}:{m}": flattened(f, m) for f, modes in MODES.items() for m in modes}


@pytest.mark.parametrize("name", [f"{f}:{m}" for f, modes in MODES.items() for m in modes])
def test_shipped_config_keeps_its_keys_and_defaults(name):
    expected = json.loads(EXPECTED.read_text())[name]
    assert flattened(*name.split(":")) == expected


def documented_keys(section: str) -> set[str]:
    """The backquoted names in the first column of the tables under `## {section}` of
    docs/configs.md ("adam_*" and "mesh.*" stand for every key they begin)."""
    text = (REPO / "docs" / "configs.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in body.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([\w.*]+)`", cell)}


def undocumented(config, documented: set[str]) -> list[str]:
    keys = traverse_util.flatten_dict(config.to_dict(), sep=".")
    patterns = [name.rstrip("*") for name in documented if name.endswith("*")]
    return sorted(
        key for key in keys if key not in documented and not key.startswith(tuple(patterns))
    )


def test_every_pretraining_key_is_documented():
    from bert_jax.pretraining.config import pretraining_config

    assert undocumented(pretraining_config(), documented_keys("Pretraining keys")) == []


@pytest.mark.parametrize("kind", ["classification", "regression", "token_classification", "squad"])
def test_every_finetuning_key_is_documented(kind):
    from bert_jax.finetuning.config import finetuning_config

    assert undocumented(finetuning_config(kind), documented_keys("Fine-tuning keys")) == []


def test_the_documentation_check_finds_a_missing_key():
    from bert_jax.pretraining.config import pretraining_config

    config = pretraining_config()
    config.data.not_a_documented_key = 1
    assert undocumented(config, documented_keys("Pretraining keys")) == [
        "data.not_a_documented_key"
    ]


def test_model_keys_are_the_bert_config_fields():
    """The model keys are written out one by one: a new BertConfig field must be added there."""
    import dataclasses

    from bert_jax.model.config import BertConfig
    from bert_jax.pretraining.config import pretraining_config

    fields = [f.name for f in dataclasses.fields(BertConfig)]
    assert sorted(pretraining_config("tiny").model.keys()) == sorted(fields)


if __name__ == "__main__":  # regenerate: python tests/unit/test_config_keys.py (only on purpose)
    sys.path.insert(0, str(REPO))
    EXPECTED.write_text(json.dumps(all_configs(), indent=1, sort_keys=True) + "\n")
