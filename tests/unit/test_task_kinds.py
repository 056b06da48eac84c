"""The task-kind registry and interface: kinds by name, each module complete, no name elsewhere."""

import inspect
import pathlib
import re

import pytest

import bert_jax
from bert_jax.errors import UserError
from bert_jax.finetuning import tasks
from bert_jax.finetuning.config import finetuning_config
from bert_jax.finetuning.tasks.base import Task


def test_unknown_kind_is_one_line_naming_every_kind():
    for ask in (lambda: tasks.get("ner"), lambda: finetuning_config("ner")):
        with pytest.raises(UserError) as error:
            ask()
        message = str(error.value)
        assert "\n" not in message and "'ner'" in message
        assert all(repr(kind) in message for kind in tasks.KINDS)


def _unimplemented(cls) -> set[str]:
    """The methods of cls still base.Task's NotImplementedError stubs."""
    stubs = {
        name
        for name, method in vars(Task).items()
        if callable(method) and "raise NotImplementedError" in inspect.getsource(method)
    }
    return {name for name in stubs if getattr(cls, name) is getattr(Task, name)}


def test_every_registered_kind_implements_the_whole_interface():
    assert len(_unimplemented(Task)) >= 10  # the stubs are found at all
    for kind in tasks.KINDS:
        task = tasks.get(kind)
        assert isinstance(task, Task) and task.kind == kind
        assert tasks.get(kind) is task  # one instance per kind
        assert not _unimplemented(type(task)), (kind, _unimplemented(type(task)))


def test_heads_widths_and_files_of_the_four_kinds():
    labels = ["neg", "pos", "neutral"]
    table = {
        kind: (t.head_name, t.num_labels(labels), t.prediction_file, t.packable, t.per_token)
        for kind, t in ((k, tasks.get(k)) for k in tasks.KINDS)
    }
    assert table == {
        "classification": ("classifier", 3, "test_predictions.tsv", True, False),
        "regression": ("classifier", 1, "test_predictions.tsv", True, False),
        "token_classification": ("classifier", 3, "test_predictions.conll", True, True),
        "squad": ("qa_outputs", 2, "test_predictions.json", False, False),
        "multilabel": ("classifier", 3, "test_predictions.tsv", True, False),
        "sentence_embedding": ("mean_pooling", 2, "test_similarities.tsv", False, False),
    }
    assert tasks.get("token_classification").head_names(crf=True) == ("classifier", "crf")


def test_kind_names_are_compared_nowhere_but_the_registry():
    """Code asks the Task (task.per_token, task.prediction_file, ...), never the kind's name."""
    package = pathlib.Path(bert_jax.__file__).parent
    registry = package / "finetuning" / "tasks" / "__init__.py"
    names = "|".join(map(re.escape, tasks.KINDS))
    quoted = re.compile(rf"""["']({names})["']""")
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        if path != registry
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if quoted.search(line) and "hf_task_model" not in line  # transformers' problem_type
    ]
    assert not found, found
