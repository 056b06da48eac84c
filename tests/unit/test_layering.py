"""The package layering rules (docs/design.md): each bert_jax module's imports, parsed with `ast`
(function-level imports included), checked against who may import whom."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "bert_jax"

# Leaf modules every layer may import; they import nothing of bert_jax but each other.
SHARED = ("bert_jax.errors", "bert_jax.paths", "bert_jax.untrusted")
# (importing package, forbidden targets): a target forbids itself and everything under it.
FORBIDDEN = (
    (
        "bert_jax.data",
        (
            "bert_jax.training",
            "bert_jax.pretraining",
            "bert_jax.finetuning",
            "bert_jax.checkpoints",
            "bert_jax.inference",
            "bert_jax.model",
            "bert_jax.planning",
        ),
    ),
    (
        "bert_jax.inference",
        ("bert_jax.pretraining.step", "bert_jax.finetuning.step", "bert_jax.training.gradients"),
    ),
)
# Packages that import nothing of bert_jax outside themselves and SHARED.
SELF_CONTAINED = ("bert_jax.model",)
ENTRY_MODULES = ("pretrain", "finetune", "plan", "export", "plot", "report", "data.prepare",
                 "data.fetch")  # fmt: skip
MAX_ENTRY_LINES = 30
# The one path helper: no module but bert_jax.paths defines these.
PATH_HELPERS = ("as_path", "is_remote", "_is_local")
PATH_MODULE = "bert_jax.paths"


# Known breaks the merge of the parallel branches removes (the lead empties these sets):
# task_model_for moves out of finetuning.step into the task-kind modules.
def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_names(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Dotted module name -> file for every module of the package at `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports(module: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """The bert_jax modules `module` imports anywhere in `source` (resolved against `known`)."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {name for name in found if _under(name, "bert_jax")}


def violations(sources: dict[str, str], packages=frozenset()) -> list[str]:
    """One line per broken rule in `sources` (module name -> source text)."""
    known = set(sources)
    found = []
    for module, source in sorted(sources.items()):
        targets = imports(module, source, known, module in packages)
        for target in sorted(targets):
            if module in SHARED and not _under(target, "bert_jax.errors"):
                if target not in SHARED:
                    found.append(f"{module} imports {target}: shared modules import only {SHARED}")
            for package in SELF_CONTAINED:
                if _under(module, package) and not _under(target, package):
                    if target not in SHARED:
                        found.append(
                            f"{module} imports {target}: {package} imports nothing of bert_jax "
                            f"outside itself but {', '.join(SHARED)}"
                        )
            for package, forbidden in FORBIDDEN:
                if _under(module, package):
                    for bad in forbidden:
                        if _under(target, bad):
                            found.append(
                                f"{module} imports {target}: {package} never imports {bad}"
                            )
        tree = ast.parse(source)
        if module != PATH_MODULE:
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and node.name in PATH_HELPERS:
                    found.append(
                        f"{module} defines {node.name}(): use the one path helper, {PATH_MODULE}"
                    )
        if module in {f"bert_jax.{name}" for name in ENTRY_MODULES}:
            lines = len(source.splitlines())
            if lines > MAX_ENTRY_LINES:
                found.append(
                    f"{module} has {lines} lines: an entry module parses flags and calls into its "
                    f"package in at most {MAX_ENTRY_LINES}"
                )
    return found


def _package_sources() -> tuple[dict[str, str], set[str]]:
    files = module_names()
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    return {name: path.read_text() for name, path in files.items()}, packages


def test_bert_jax_keeps_its_layering():
    sources, packages = _package_sources()
    assert "bert_jax.model.modeling" in sources and "bert_jax.data.input_pipeline" in sources
    broken = violations(sources, packages)
    assert not broken, "layering broken:\n" + "\n".join(broken)


def _fake_tree(**extra: str) -> dict[str, str]:
    sources = {
        "bert_jax": "",
        "bert_jax.errors": "",
        "bert_jax.paths": "def as_path(p):\n    return p\n",
        "bert_jax.untrusted": "from bert_jax.errors import UserError\n",
        "bert_jax.model": "",
        "bert_jax.model.modeling": "from bert_jax.model import crf\nfrom bert_jax import errors\n",
        "bert_jax.model.crf": "import jax\n",
        "bert_jax.data": "",
        "bert_jax.data.input_pipeline": "from bert_jax.data import packing\n",
        "bert_jax.data.packing": "from bert_jax.paths import as_path\n",
        "bert_jax.training": "",
        "bert_jax.training.gradients": "from bert_jax.model.modeling import BertModel\n",
        "bert_jax.finetuning": "",
        "bert_jax.finetuning.step": "",
        "bert_jax.inference": "",
        "bert_jax.inference.pipelines": "from bert_jax.model import modeling\n",
        "bert_jax.finetune": "from bert_jax import entry\n",
        "bert_jax.entry": "",
    }
    sources.update(extra)
    return sources


_PACKAGES = {"bert_jax", "bert_jax.model", "bert_jax.data", "bert_jax.training"}


def test_checker_passes_a_clean_tree():
    assert violations(_fake_tree(), _PACKAGES) == []


@pytest.mark.parametrize(
    "module, source, expected",
    [
        # model reaching out, at module level, inside a function, relatively, by `import x.y`
        (
            "bert_jax.model.modeling",
            "from bert_jax.training import gradients\n",
            "bert_jax.model.modeling imports bert_jax.training.gradients: bert_jax.model imports",
        ),
        (
            "bert_jax.model.crf",
            "def f():\n    from bert_jax.data.input_pipeline import x\n",
            "bert_jax.model.crf imports bert_jax.data.input_pipeline: bert_jax.model imports",
        ),
        (
            "bert_jax.model.crf",
            "from ..training import gradients\n",
            "bert_jax.model.crf imports bert_jax.training.gradients: bert_jax.model imports",
        ),
        (
            "bert_jax.model.crf",
            "import bert_jax.finetuning.step\n",
            "bert_jax.model.crf imports bert_jax.finetuning.step: bert_jax.model imports",
        ),
        (
            "bert_jax.data.packing",
            "from bert_jax.model.modeling import BertConfig\n",
            "bert_jax.data.packing imports bert_jax.model.modeling: bert_jax.data never imports "
            "bert_jax.model",
        ),
        (
            "bert_jax.data.packing",
            "from bert_jax import training\n",
            "bert_jax.data.packing imports bert_jax.training: bert_jax.data never imports "
            "bert_jax.training",
        ),
        (
            "bert_jax.inference.pipelines",
            "def f():\n    from bert_jax.training.gradients import loss\n",
            "bert_jax.inference.pipelines imports bert_jax.training.gradients: bert_jax.inference "
            "never imports bert_jax.training.gradients",
        ),
        (
            "bert_jax.untrusted",
            "from bert_jax.data import packing\n",
            "bert_jax.untrusted imports bert_jax.data.packing: shared modules import only",
        ),
        (
            "bert_jax.data.input_pipeline",
            "import os\n\ndef as_path(p):\n    return p\n",
            "bert_jax.data.input_pipeline defines as_path(): use the one path helper, "
            "bert_jax.paths",
        ),
        (
            "bert_jax.finetune",
            "x = 1\n" * 31,
            "bert_jax.finetune has 31 lines: an entry module",
        ),
    ],
)
def test_checker_names_each_broken_rule(module, source, expected):
    broken = violations(_fake_tree(**{module: source}), _PACKAGES)
    assert len(broken) == 1 and broken[0].startswith(expected), broken


def test_checker_allows_what_the_rules_allow():
    allowed = _fake_tree(
        **{
            "bert_jax.model.crf": "from bert_jax.untrusted import shown\nfrom . import modeling\n",
            "bert_jax.inference.pipelines": "from bert_jax.finetuning import scores\n",
            "bert_jax.data.packing": "from bert_jax import entry, errors\n",
            "bert_jax.finetune": "x = 1\n" * 30,
        }
    )
    assert violations(allowed, _PACKAGES) == []


def test_importing_the_library_defines_no_command_line_flags():
    """absl flags are global to a process: a library module defining them on import clashes with
    another one's (two commands' --out) in a notebook or a test process. Only entry modules do."""
    library = [
        name
        for name in module_names()
        if name not in {f"bert_jax.{entry}" for entry in ENTRY_MODULES}
    ]
    code = (
        "import importlib, sys\n"
        "from absl import flags\n"
        "skipped = []\n"
        f"for name in {library!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:  # an optional extra (TensorFlow, Beam) not installed\n"
        "        if (err.name or '').startswith('bert_jax'):\n"
        "            raise\n"
        "        skipped.append(name)\n"
        "ours = sorted(m for m in flags.FLAGS.flags_by_module_dict() if m.startswith('bert_jax'))\n"
        "print(len(skipped), ours)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    skipped, defined = done.stdout.strip().split(" ", 1)
    assert int(skipped) < 5, done.stdout
    assert defined == "[]", f"library modules define flags on import: {defined}"
