"""The task kinds: the one place a kind name (config task.kind, task_info.json) maps to a module.

    task = tasks.get("token_classification")   # a base.Task; task.model(...), task.decode(...)

Adding a kind = one module implementing base.Task + one line in _REGISTRY + a config file.
Modules load on first use, so importing this package stays cheap and free of cycles.
"""

from __future__ import annotations

import functools
import importlib

from bert_jax.errors import UserError

# kind name -> "module:Class" under bert_jax.finetuning.tasks
_REGISTRY = {
    "classification": "classification:Classification",
    "regression": "classification:Regression",
    "token_classification": "tagging:Tagging",
    "squad": "qa:QuestionAnswering",
    "multilabel": "multilabel:MultiLabel",
    "sentence_embedding": "embedding:Embedding",
}
KINDS = tuple(_REGISTRY)


def get(kind: str):
    """The base.Task of `kind`; a UserError listing the kinds for any other name."""
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise UserError(f"task kind {kind!r} is not one of {KINDS}")
    return _load(kind)


@functools.cache
def _load(kind: str):
    module, name = _REGISTRY[kind].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)(kind)


def model_for(task_info: dict, config):
    """The task model a fine-tuned workdir's task_info.json describes (inference, checkpoints)."""
    return get(task_info["kind"]).model(
        config,
        task_info["num_labels"],
        bool(task_info.get("crf", False)),
        int(task_info.get("head_window", 0)),
    )


def for_hf_task_model(architecture: str, problem_type: str | None, num_labels: int) -> str:
    """The kind whose Task.hf_task_model is this transformers class and problem_type (without
    one, transformers' rule: one label is regression); a UserError for none."""
    if problem_type is None and architecture == "BertForSequenceClassification":
        problem_type = "regression" if num_labels == 1 else "single_label_classification"
    for kind in KINDS:
        model = _load(kind).hf_task_model
        if model is not None and model[0] == architecture and model[1] in (None, problem_type):
            return kind
    raise UserError(f"no task kind reads a {architecture} with problem_type {problem_type!r}")
