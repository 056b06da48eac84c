"""The Cloud TPU path end to end against a GCS API: fake-gcs-server on 127.0.0.1 (tests/conftest.py
`gcs`), an implementation independent of bert_jax, with object generations and preconditions;
gcsfs/etils.epath and tensorstore/Orbax talk to it with no credentials. The README's cloud recipe
runs here with every path on gs:// and a tiny config: prepare from gs:// text, pretrain into a
gs:// workdir (SIGTERM mid-run, then the same command resumes exactly: compared with an unbroken
run), fine-tune from the gs:// run into a gs:// workdir, export and plot from gs://.

Then the same run through a proxy that fails requests (tests/fake_gcs.py `FaultProxy`): saves
that fail now and then are retried, one that keeps failing stops the run with one line and exit
status 75, the previous checkpoint intact, and the same command resumes it to the same losses.
"""

import contextlib
import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO_ROOT, demo_config
from etils import epath
from fake_gcs import FaultProxy

from bert_jax.checkpoints import sealing
from bert_jax.data import input_pipeline
from bert_jax.errors import SAVE_FAILED_STATUS

STEPS = 16
# A preemption inside a log window must still log what an unbroken run logs.
RUN_FLAGS = [
    f"--config.num_train_steps={STEPS}",
    "--config.checkpoint_every_steps=8",
    "--config.log_every_steps=4",
    "--config.eval_every_steps=8",
    "--config.data.show_progress=False",
]
TIMING_KEYS = {"steps_per_sec", "tokens_per_sec", "real_tokens_per_sec", "examples_per_sec", "mfu"}


def write_corpus(bucket: str, lines: list[str]) -> list[str]:
    """The corpus lines as gs://BUCKET/corpus/part-{0,1}.txt, split at a document boundary;
    returns the two texts."""
    half = len(lines) // 2
    while lines[half].strip():  # split at a document boundary (an empty line)
        half += 1
    corpus = epath.Path(f"gs://{bucket}/corpus")
    corpus.mkdir(parents=True, exist_ok=True)
    texts = ["".join(lines[:half]), "".join(lines[half:])]
    for i, text in enumerate(texts):
        (corpus / f"part-{i}.txt").write_text(text)
    return texts


@pytest.fixture(scope="module")
def cloud(gcs, tmp_path_factory):
    """The bucket with the corpus as two text files, a compilation cache shared by the runs,
    and the bundled corpus prepared locally (what pretraining reads until it reads gs://)."""
    bucket, _ = gcs
    started = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with gzip.open(input_pipeline.BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    write_corpus(bucket, lines)
    local = tmp_path_factory.mktemp("cloud")
    data = demo_config("test").data
    data.data_dir, data.show_progress = str(local / "data"), False
    input_pipeline.prepare_data(data)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["JAX_COMPILATION_CACHE_DIR"] = str(local / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    state = {"bucket": bucket, "env": env, "local": local, "data_dir": data.data_dir}
    state["seconds"] = {"setup": time.perf_counter() - started}
    yield state
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = used.ru_utime + used.ru_stime - children.ru_utime - children.ru_stime
    seconds = {k: round(v, 1) for k, v in state["seconds"].items()}
    print(
        f"gs:// end to end: {time.perf_counter() - started:.0f} s wall, {cpu:.0f} s CPU in the "
        f"commands (machine load {os.getloadavg()[0]:.1f}); wall seconds per stage: {seconds}"
    )


def _run(cloud, args, timeout=180, stage=None, env=None):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env or cloud["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if stage:
        cloud["seconds"][stage] = cloud["seconds"].get(stage, 0) + time.perf_counter() - started
    return result


def _pretrain_args(cloud, workdir, data_dir=None):
    return [
        "-m",
        "bert_jax.pretrain",
        "--config",
        "configs/demo.py:test",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir or cloud['data_dir']}",
        *RUN_FLAGS,
    ]


def test_prepare_reads_text_on_gs(cloud):
    bucket = cloud["bucket"]
    result = _run(
        cloud,
        [
            "-m",
            "bert_jax.data.prepare",
            f"--input_files=gs://{bucket}/corpus/*.txt",
            f"--vocab_file={input_pipeline.BUNDLED_VOCAB}",
            f"--data_dir=gs://{bucket}/data",
        ],
        timeout=120,
        stage="prepare",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert list(epath.Path(f"gs://{bucket}/data").iterdir())


def test_pretrain_on_gs_is_preempted_and_resumes_exactly(cloud):
    """The same command three times into gs:// workdirs: an unbroken run, and one stopped by
    SIGTERM and started again, which must log exactly what the unbroken one logged."""
    bucket = cloud["bucket"]
    unbroken = f"gs://{bucket}/unbroken"
    result = _run(cloud, _pretrain_args(cloud, unbroken), stage="pretrain_unbroken")
    assert result.returncode == 0, result.stderr[-3000:]

    run = f"gs://{bucket}/run"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, *_pretrain_args(cloud, run)],
        cwd=REPO_ROOT,
        env=cloud["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stdout:  # preempted right after the first step
            if "compiled and ran the first train step" in line:
                process.send_signal(signal.SIGTERM)
                break
        out, err = process.communicate(timeout=180)
    finally:
        process.kill()
    cloud["seconds"]["pretrain_preempted"] = time.perf_counter() - started
    assert process.returncode == 0, err[-3000:]
    stopped = int(out.split("preempted: saved step ")[1].split()[0])
    assert 0 < stopped < STEPS, out

    result = _run(cloud, _pretrain_args(cloud, run), stage="pretrain_resumed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from gs://{bucket}/run/checkpoints/{stopped}" in result.stdout

    _assert_same_metrics(run, unbroken)
    final = json.loads(epath.Path(run, "final_step.json").read_text())
    assert final == {"step": STEPS}
    steps = sorted(int(p.name) for p in epath.Path(run, "checkpoints").iterdir())
    assert steps[-1] == STEPS
    assert epath.Path(run, "checkpoints", str(STEPS), "bert_jax_manifest.json").exists()


def _assert_same_metrics(run, unbroken) -> None:
    from bert_jax.training.metrics import read_metrics

    want, got = read_metrics(unbroken), read_metrics(run)
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(want) == 6
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        for key in set(w) - TIMING_KEYS:
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (w["step"], key)


@contextlib.contextmanager
def _faulty(cloud, *refusals):
    """A FaultProxy in front of the bucket failing a few requests at random (503, 429, cut
    connections) and, for each (seconds, match) of `refusals`, every checkpoint request with 403
    for that long from the first whose URL contains `match`; yields (proxy, env for it)."""
    server = cloud["env"]["STORAGE_EMULATOR_HOST"]
    with FaultProxy(server, rate=0.05, max_faults=4, lifetime=600) as proxy:
        for seconds, match in refusals:
            within = match[: match.index("checkpoints/") + len("checkpoints/")]
            proxy.outage(seconds, match, status=403, within=within)
        url = {"STORAGE_EMULATOR_HOST": proxy.url, "TENSORSTORE_GCS_HTTP_URL": proxy.url}
        yield proxy, dict(cloud["env"], **url)


def test_failing_saves_are_retried_then_stop_the_run_and_it_resumes(cloud):
    """Through a proxy failing a few requests at random (503, 429, cut connections: the storage
    clients retry those) and refusing the checkpoints' requests with 403 (no client retries
    that): a save refused for 2 s is saved again; one refused for good stops the run (one line,
    exit 75) with the previous step intact and no later step a resume takes; the same command
    then resumes and logs what an unbroken run logged."""
    bucket = cloud["bucket"]
    unbroken, run = f"gs://{bucket}/unbroken", f"gs://{bucket}/faults"
    if not epath.Path(unbroken, "final_step.json").exists():
        pytest.skip("needs the unbroken run of test_pretrain_on_gs_is_preempted_and_resumes")
    args = _pretrain_args(cloud, run) + ["--config.checkpoint_every_steps=4"]
    refusals = (2, "faults/checkpoints/4/"), (600, "faults/checkpoints/16/")
    with _faulty(cloud, *refusals) as (proxy, env):
        result = _run(cloud, args, env=env, stage="pretrain_save_fails")
        stopped = proxy.tally()
    assert result.returncode == SAVE_FAILED_STATUS, (result.stdout + result.stderr)[-3000:]
    assert f"checkpoint {run}/checkpoints/4 not saved: " in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: checkpoint {run}/checkpoints/16 could not be saved (4 ")
    assert "403" in line and f"the newest checkpoint, {run}/checkpoints/12, is intact" in line
    assert not epath.Path(run, "final_step.json").exists()
    steps = {int(p.name): p for p in epath.Path(run, "checkpoints").iterdir() if p.name.isdigit()}
    intact = {step for step, path in steps.items() if sealing.checkpoint_problem(path) is None}
    assert 12 in intact and intact <= {8, 12}, (sorted(steps), sorted(intact), stopped)

    with _faulty(cloud, (2, "faults/checkpoints/16/")) as (proxy, env):
        result = _run(cloud, args, env=env, stage="pretrain_save_resumed")
        resumed = proxy.tally()
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"resumed from {run}/checkpoints/12" in result.stdout, result.stdout
    assert f"checkpoint {run}/checkpoints/16 not saved: " in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    print(f"fault proxy: stopped run {stopped}; resumed run {resumed}")
    _assert_same_metrics(run, unbroken)
    # This process listed step 16 before the resumed run saved it: gcsfs would answer from that.
    epath.backend.fsspec_backend.fs(run).invalidate_cache()
    assert sealing.checkpoint_problem(epath.Path(run, "checkpoints", str(STEPS))) is None


def test_pretrain_reads_prepared_data_on_gs(cloud):
    bucket = cloud["bucket"]
    data_dir = epath.Path(f"gs://{bucket}/data")
    if not (data_dir.exists() and list(data_dir.iterdir())):
        pytest.fail("no prepared data on gs:// (test_prepare_reads_text_on_gs did not pass)")
    args = _pretrain_args(cloud, f"gs://{bucket}/from_gs_data", data_dir=str(data_dir))
    args += [f"--config.data.input_files=gs://{bucket}/corpus/*.txt", "--config.num_train_steps=4"]
    result = _run(cloud, args, timeout=120, stage="pretrain_from_gs_data")
    assert result.returncode == 0, result.stderr[-3000:]


def test_finetune_from_gs_run_into_gs_workdir(cloud):
    """Fine-tuning reads a gs:// pretraining run and writes a gs:// workdir whose sealed
    checkpoints (a manifest per step) load back for inference."""
    bucket = cloud["bucket"]
    if not epath.Path(f"gs://{bucket}/run/final_step.json").exists():
        pytest.skip("needs the pretraining run of test_pretrain_on_gs_is_preempted_and_resumes")
    tasks = REPO_ROOT / "tests" / "data" / "tasks" / "sentiment"
    result = _run(
        cloud,
        [
            "-m",
            "bert_jax.finetune",
            "--config",
            "configs/finetune/classification.py:test",
            f"--config.init_checkpoint=gs://{bucket}/run",
            f"--workdir=gs://{bucket}/ft",
            f"--config.task.train_file={tasks / 'train.tsv'}",
            f"--config.task.dev_file={tasks / 'dev.tsv'}",
            "--config.num_train_steps=4",
        ],
        timeout=120,
        stage="finetune",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ft = epath.Path(f"gs://{bucket}/ft")
    results = json.loads((ft / "eval_results.json").read_text())
    assert results["step"] == 4 and 0.0 <= results["accuracy"] <= 1.0
    for manager in ("checkpoints", "best"):
        (step,) = [p for p in (ft / manager).iterdir() if p.name.isdigit()]
        assert (step / "bert_jax_manifest.json").exists(), manager
    from bert_jax.checkpoints import pretrained

    model = pretrained.load_finetuned(str(ft))  # the best step, verified, read from gs://
    assert model.kind == "classification" and model.tokenizer.vocab_size > 100
    assert set(model.params) == {"bert", model.info.task_info["head"]}


def test_export_and_plot_read_a_gs_run(cloud, tmp_path):
    bucket = cloud["bucket"]
    run = f"gs://{bucket}/run"
    if not epath.Path(run, "final_step.json").exists():
        pytest.skip("needs the pretraining run of test_pretrain_on_gs_is_preempted_and_resumes")
    out = tmp_path / "exported"
    result = _run(cloud, ["-m", "bert_jax.export", run, f"--out={out}"], stage="export")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in out.iterdir()}
    from safetensors.numpy import load_file

    from bert_jax.checkpoints import pretrained

    exported = load_file(out / "model.safetensors")["bert.embeddings.word_embeddings.weight"]
    # The gs:// run's last checkpoint, read (and its arrays verified) from this process.
    params = pretrained.load_pretraining_params(pretrained.inspect_checkpoint(run))
    table = np.asarray(params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    np.testing.assert_array_equal(exported, table)

    png = tmp_path / "curves.png"
    result = _run(cloud, ["-m", "bert_jax.plot", run, f"--out={png}"], stage="plot")
    assert result.returncode == 0, result.stderr[-3000:]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    result = _run(cloud, ["-m", "bert_jax.plot", run, f"--out={run}/curves.png"], stage="plot")
    assert result.returncode == 0, result.stderr[-3000:]
    assert epath.Path(run, "curves.png").read_bytes()[:4] == b"\x89PNG"
