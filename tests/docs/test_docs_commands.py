"""Every command README.md and docs/*.md show runs as written in the environment `make demo`
creates (activated with `source .venv/bin/activate`, so `python` is the venv's): each module
resolves and answers --help, each config file, mode and --config override exists, and the
README's own-corpus walk-through runs end to end on a tiny slice."""

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
PROGRAMS = {"python", "make", "pip", "source", "tensorboard"}


def _commands_in(text: str) -> list[str]:
    """Shell commands of the fenced shell blocks (continuations joined, `$ ` prompts and
    comments dropped) and of inline `python -m ...` spans."""
    found = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if language not in SHELL_LANGUAGES:
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.strip().removeprefix("$ ")
            words = shlex.split(line, comments=True) if line else []
            if words and words[0] in PROGRAMS:
                found.append(shlex.join(words))
    inline = re.findall(r"`(python -m [^`]+)`", re.sub(r"\s*\n\s*", " ", text))
    return found + [shlex.join(shlex.split(c)) for c in inline]


@functools.cache
def documented_commands() -> list[tuple[str, str]]:
    """(document name, command) for every command in README.md and docs/*.md."""
    return [
        (path.relative_to(REPO_ROOT).as_posix(), command)
        for path in DOCUMENTS
        for command in _commands_in(path.read_text(encoding="utf-8"))
    ]


def _modules() -> list[str]:
    return sorted(
        {shlex.split(c)[2] for _, c in documented_commands() if c.startswith("python -m ")}
    )


def test_commands_were_found_and_use_one_environment():
    commands = [c for _, c in documented_commands()]
    assert len(commands) > 30
    assert "bert_jax.data.prepare" in _modules() and "bert_jax.export" in _modules()
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in readme  # the one way the commands get their python
    for name, command in documented_commands():
        program = shlex.split(command)[0]
        assert program != "python" or re.match(r"python (-m [\w.]+|-c |benchmarks/)", command), (
            name,
            command,
        )
        assert not command.startswith((".venv/bin/", "python3 ")), (name, command)


@pytest.mark.parametrize("module", _modules())
def test_every_documented_module_resolves_and_answers_help(module):
    assert importlib.util.find_spec(module) is not None, module
    if module in ("bert_jax.plan",) and importlib.util.find_spec("libtpu") is None:
        pass  # --help needs no libtpu: the planner imports it only to compile
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    # absl exits 1 after --help, argparse 0; either way the help is on stdout, no traceback.
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "--" in done.stdout and ("usage" in done.stdout or "flags:" in done.stdout), done.stdout


@functools.cache
def _full_help(module: str) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", module, "--helpfull"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if "usage:" in done.stderr:  # argparse has no --helpfull: its --help lists every flag
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    return done.stdout


def test_every_documented_flag_exists():
    """A misspelt or renamed flag in the docs (absl would stop on it) is caught here."""
    checked = 0
    for name, command in documented_commands():
        words = shlex.split(command)
        if words[:2] != ["python", "-m"]:
            continue
        known = set(re.findall(r"--(?:\[no\])?(\w+)", _full_help(words[2])))
        for word in words[3:]:
            flag = re.match(r"--(?:no)?(\w+)(?:=|$)", word)
            if flag and not word.startswith("--config."):
                name_ = flag.group(1)
                plain = word[2:].split("=")[0]
                assert plain in known or name_ in known, (name, command, word)
                checked += 1
    assert checked >= 40


def _config_module(path: str):
    spec = importlib.util.spec_from_file_location("documented_config", REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_documented_configs_modes_and_overrides_exist():
    checked = 0
    for name, command in documented_commands():
        words = shlex.split(command)
        if "--config" not in words:
            continue
        path, _, mode = words[words.index("--config") + 1].partition(":")
        if path.startswith("runs/"):
            continue  # a config the docs have the user write first (docs/pretraining.md step 4)
        assert (REPO_ROOT / path).is_file(), (name, command)
        module = _config_module(path)
        config = module.get_config(mode) if mode else module.get_config()
        for word in words:
            key = re.match(r"--config\.([\w.]+)", word)
            if key:
                node = config
                for part in key.group(1).split("."):
                    assert part in node, (name, command, key.group(1))
                    node = node[part]
        checked += 1
    assert checked >= 10


def test_documented_make_targets_exist():
    targets = {shlex.split(c)[1] for _, c in documented_commands() if c.startswith("make ")}
    assert {"demo", "notebook", "test"} <= targets
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target


def _readme_walkthrough() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Pretraining on your own corpus") :]
    # The five steps' block; the fetch block before it downloads (test_readme_zh.py runs fetch).
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    block = next(b for b in blocks if "bert_jax.data.prepare" in b)
    return _commands_in(f"```bash\n{block}```")


TINY = {  # appended to the commands that train: the README's own settings, shrunk to seconds
    "bert_jax.pretrain": [
        "--config.model.num_hidden_layers=1", "--config.model.hidden_size=32",
        "--config.model.num_attention_heads=2", "--config.model.intermediate_size=64",
        "--config.model.dtype=float32", "--config.num_train_steps=4", "--config.warmup_steps=1",
        "--config.batch_size=8", "--config.log_every_steps=2", "--config.eval_every_steps=4",
        "--config.eval_steps=1", "--config.checkpoint_every_steps=4", "--config.mesh.data=1",
        "--config.progress_bar=false", "--config.data.show_progress=false",
    ],
    "bert_jax.finetune": [
        "--config.num_train_steps=4", "--config.batch_size=8", "--config.max_seq_length=32",
        "--config.log_every_steps=2", "--config.mesh.data=1", "--config.progress_bar=false",
    ],
    "bert_jax.data.prepare": ["--train_vocab_size=600"],
}  # fmt: skip


def test_readme_walkthrough_runs_as_written_on_a_tiny_slice(tmp_path):
    """The README's five steps with `corpus/` a tiny slice of the bundled text, `runs/` in a
    temporary directory, and the model and step counts shrunk; everything else as written."""
    commands = _readme_walkthrough()
    assert [shlex.split(c)[2] for c in commands] == [
        "bert_jax.data.prepare", "bert_jax.pretrain", "bert_jax.finetune", "bert_jax.export",
        "bert_jax.plot",
    ]  # fmt: skip
    import gzip

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with gzip.open(REPO_ROOT / "bert_jax" / "assets" / "kjv.txt.gz", "rt") as f:
        text = f.read().split("\n\n")
    (corpus / "slice.txt").write_text("\n\n".join(text[:12]) + "\n", encoding="utf-8")
    runs = tmp_path / "runs"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]])  # activated
    for command in commands:
        words = shlex.split(command)
        module = words[2]
        words = [w.replace("corpus/*.txt", str(corpus / "*.txt")) for w in words]
        words = [re.sub(r"(^|=)runs/", rf"\g<1>{runs}/", w) for w in words]
        words = [w for w in words if not w.startswith("--train_vocab_size=")]
        words = words + TINY.get(module, [])
        if module == "bert_jax.pretrain":  # the vocabulary trained above, not BERT's 30522
            words = [w for w in words if not w.startswith("--config.model.vocab_size=")]
            words.append("--config.model.vocab_size=600")
        done = subprocess.run(words, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        assert done.returncode == 0, (command, done.stderr[-3000:])
    assert (runs / "base_hf" / "model.safetensors").is_file()
    assert (runs / "curves.png").stat().st_size > 40_000
