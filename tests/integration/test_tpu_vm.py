"""launch/tpu_vm.sh's verbs, in the order docs/cloud_tpu.md gives them, against a fake `gcloud`.

The fake runs each ssh `--command` here: a worker is a folder (its HOME), `--worker=all` starts
the command on both at once with the jax.distributed settings a TPU slice would give (a
coordinator on 127.0.0.1), scp copies into each HOME. Each worker's `python3` is Python 3.10,
as on the Ubuntu 22.04 runtime images. Nothing is downloaded: uv, setuptools and the test's
site-packages (jax, flax, ...) come from wheels made here of what this Python has installed,
offered to pip and uv offline (PIP_NO_INDEX / PIP_FIND_LINKS and the script's INSTALL_ARGS).
The bucket is the suite's GCS, fake-gcs-server (tests/conftest.py `gcs`).
"""

import base64
import gzip
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
import zipfile

import pytest
from conftest import REPO_ROOT
from etils import epath
from test_cloud import RUN_FLAGS as TRAIN_FLAGS  # the cloud test's short run
from test_cloud import STEPS, TIMING_KEYS, write_corpus

from bert_jax.errors import UserError

SCRIPT = REPO_ROOT / "launch" / "tpu_vm.sh"

FAKE_GCLOUD = r"""
import json, os, pathlib, shutil, socket, subprocess, sys

cloud = pathlib.Path(os.environ["FAKE_TPU_CLOUD"])
workers = int(os.environ.get("FAKE_TPU_WORKERS", "2"))
args = sys.argv[1:]
with open(cloud / "calls.jsonl", "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:3] != ["compute", "tpus", "tpu-vm"]:
    sys.exit(f"fake gcloud: {args} not emulated")
verb, rest = args[3], args[5:]
opts = {}
for i, arg in enumerate(rest):
    if arg.startswith("--"):
        key, _, value = arg[2:].partition("=")
        opts[key] = value or (rest[i + 1] if i + 1 < len(rest) else "")
vm = cloud / "vm.json"
homes = [cloud / f"worker-{i}" for i in range(workers)]
if verb == "create":
    vm.write_text(json.dumps({"state": "READY", **opts}))
    for i, home in enumerate(homes):  # each worker's own hostname
        (home / ".bin").mkdir(parents=True)
        (home / ".bin" / "hostname").write_text(f"#!/bin/sh\necho t1v-worker-{i}\n")
        (home / ".bin" / "hostname").chmod(0o755)
elif verb == "describe":
    if not vm.exists():
        sys.exit("ERROR: NOT_FOUND")
    print(json.loads(vm.read_text())["state"])
elif verb == "delete":
    vm.unlink()
    for home in homes:
        shutil.rmtree(home)
elif not vm.exists():
    sys.exit("ERROR: NOT_FOUND: no TPU VM")
elif verb == "scp":
    source, target = args[4], args[5].split(":", 1)[1]
    for home in homes:
        shutil.copy(source, home / target)
elif verb == "ssh":
    chosen = range(workers) if opts["worker"] == "all" else [int(opts["worker"])]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for i in chosen:
        env = dict(os.environ, HOME=str(homes[i]))
        env["PATH"] = f"{homes[i] / '.bin'}:{env['PATH']}"
        if opts["worker"] == "all" and workers > 1:  # what a slice's metadata tells JAX
            env.update(BERT_JAX_COORDINATOR=f"127.0.0.1:{port}",
                       BERT_JAX_NUM_PROCESSES=str(workers), BERT_JAX_PROCESS_ID=str(i))
        processes.append(subprocess.Popen(["bash", "-c", opts["command"]], cwd=homes[i], env=env))
    sys.exit(max(p.wait() for p in processes))
else:
    sys.exit(f"fake gcloud: {verb} not emulated")
"""


def _write_wheel(directory, name, version, files, scripts=()):
    """A wheel of `files` ({path in site-packages: bytes}); `scripts` go to the bin folder."""
    dist_info = f"{name}-{version}.dist-info"
    files = dict(files)
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    for script, data in scripts:
        files[f"{name}-{version}.data/scripts/{script}"] = data
    record = []
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for arcname, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            mode = 0o755 if "/scripts/" in arcname else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            wheel.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arcname},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def _wheel_of_installed(directory, name):
    """A wheel of an installed distribution of this Python (uv, setuptools): what the test
    offers pip and uv in place of the package index."""
    dist = importlib.metadata.distribution(name)
    files, scripts = {}, []
    for file in dist.files:
        text = str(file)
        if "__pycache__" in text or file.name in ("RECORD", "INSTALLER", "WHEEL", "METADATA"):
            continue
        data = file.locate().read_bytes()
        if text.startswith(".."):
            if "/bin/" in text:
                scripts.append((file.name, data))
        else:
            files[text] = data  # entry points (setuptools' commands) included
    return _write_wheel(directory, dist.metadata["Name"], dist.version, files, scripts)


def _image_python3(bin_dir):
    """`python3` as on the TPU runtime images: Python 3.10 (a real one when this machine has it;
    else one that says it is 3.10 and only runs pip, as uv's installer needs)."""
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    for real in [shutil.which("python3.10"), *sorted(pyenv.glob("versions/3.10*/bin/python3.10"))]:
        probe = "import sys, pip; assert sys.version_info[:2] == (3, 10)"
        if real and subprocess.run([real, "-c", probe], capture_output=True).returncode == 0:
            (bin_dir / "python3").symlink_to(real)
            return f"real {real}"
    (bin_dir / "python3").write_text(
        "#!/bin/sh\n"
        'case "$*" in --version) echo Python 3.10.12;; "-m pip install"*) '
        f'exec {sys.executable} "$@";; *) echo "Python 3.10: cannot run $*" >&2; exit 1;; esac\n'
    )
    (bin_dir / "python3").chmod(0o755)
    return "stand-in"


@pytest.fixture(scope="module")
def cloud(gcs, tmp_path_factory):
    """The fake cloud: gcloud and python3 stand-ins, wheels instead of the index, the bucket
    with a corpus of two text files on gs://, and the environment the script runs with."""
    pytest.importorskip("uv", reason="uv not installed (pip install -e '.[dev]')")
    bucket, gcs_env = gcs
    root = tmp_path_factory.mktemp("tpu")
    bin_dir, wheels = root / "bin", root / "wheels"
    bin_dir.mkdir()
    wheels.mkdir()
    (bin_dir / "gcloud").write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    (bin_dir / "gcloud").chmod(0o755)
    image_python = _image_python3(bin_dir)
    for name in ("uv", "setuptools"):
        _wheel_of_installed(wheels, name)
    # pyproject.toml's build requirement "wheel": setuptools>=70.1 brings its own copy (vendored),
    # so the distribution alone, with nothing to import, satisfies it.
    _write_wheel(wheels, "wheel", "0.46.3", {})
    # jax, flax, ... of this Python, reached from the workers' venvs through a .pth file.
    site = sysconfig.get_paths()["purelib"]
    _write_wheel(wheels, "offline_site", "0", {"offline_site.pth": site + "\n"})

    with gzip.open(REPO_ROOT / "bert_jax" / "assets" / "kjv.txt.gz", "rt") as f:
        lines = f.read().splitlines(keepends=True)[:6000]
    texts = write_corpus(bucket, lines)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(gcs_env)
    env.update(
        # uv finds a Python 3.11 on PATH; this one's base interpreter is the last resort.
        PATH=f"{bin_dir}:{env['PATH']}:{pathlib.Path(sys._base_executable).parent}",
        FAKE_TPU_CLOUD=str(root),
        PIP_NO_INDEX="1",
        PIP_ROOT_USER_ACTION="ignore",
        PIP_FIND_LINKS=str(wheels),
        UV_PYTHON_DOWNLOADS="never",  # a real VM downloads Python 3.11 here
        UV_CACHE_DIR=str(root / "uv_cache"),
        INSTALL_ARGS=f"--offline --no-deps --find-links={wheels} offline_site",
        BUCKET=f"gs://{bucket}",
        TPU_NAME="bert-test",
        ACCELERATOR="v5e-16",
        INPUT_FILES=f"gs://{bucket}/corpus/*.txt",
        VOCAB_FILE=f"gs://{bucket}/vocab.txt",
        CONFIG="configs/demo.py:test",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    state = {"root": root, "env": env, "bucket": bucket, "image_python": image_python}
    state["corpus"] = texts
    started = time.monotonic()
    yield state
    print(
        f"tpu_vm.sh verbs: {time.monotonic() - started:.0f} s wall (load "
        f"{os.getloadavg()[0]:.1f}); seconds in each verb: {state.get('seconds')}"
    )
    for home in root.glob("worker-*"):  # no job outlives the test
        for pid_file in (home / "bert_jax" / "logs").glob("*.pid"):
            pid = int(pid_file.read_text())
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass


def _verb(cloud, *args, timeout=300, **env):
    started = time.monotonic()
    result = subprocess.run(
        [str(SCRIPT), *args],
        env=dict(cloud["env"], **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args}: {(result.stdout + result.stderr)[-4000:]}"
    seconds = cloud.setdefault("seconds", {})
    seconds[args[0]] = round(seconds.get(args[0], 0) + time.monotonic() - started, 1)
    return result.stdout + result.stderr


def _log(cloud, worker, run):
    path = cloud["root"] / f"worker-{worker}" / "bert_jax" / "logs" / f"{run}.log"
    return path.read_text() if path.exists() else ""


def _wait_until_exited(cloud, run, timeout=400):
    """Until both workers' jobs of `run` have ended (their exit status written)."""
    deadline = time.monotonic() + timeout
    for worker in (0, 1):
        logs = cloud["root"] / f"worker-{worker}" / "bert_jax" / "logs"
        pid = int((logs / f"{run}.pid").read_text())
        while not (logs / f"{run}.exit").exists() or _alive(pid):
            assert time.monotonic() < deadline, _log(cloud, worker, run)[-3000:]
            time.sleep(0.5)
        assert (logs / f"{run}.exit").read_text() == "0\n", _log(cloud, worker, run)[-3000:]


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait_for(cloud, run, text, timeout=300):
    """Until worker 0's log of `run` says `text`."""
    deadline = time.monotonic() + timeout
    while text not in _log(cloud, 0, run):
        assert time.monotonic() < deadline, f"no {text!r}: {_log(cloud, 0, run)[-3000:]}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def vm(cloud):
    """`create` and `setup`: the workers' homes with the checkout and its venv."""
    _verb(cloud, "create")
    cloud["setup_output"] = _verb(cloud, "setup")
    return cloud


def test_python_requires_is_what_the_dependencies_require():
    """setup.cfg's python_requires is no lower than what the installed jax, flax, ... need."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    declared = config["options"]["python_requires"]
    minimum = lambda spec: tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec)[1].split("."))  # noqa: E731
    needed = {}
    for name in ("jax", "jaxlib", "flax", "grain", "orbax-checkpoint", "optax", "numpy"):
        requires = importlib.metadata.metadata(name)["Requires-Python"]
        needed[name] = minimum(requires)
    assert minimum(declared) >= max(needed.values()), (declared, needed)


def test_a_vocabulary_learned_from_gs_text_is_read_from_gs(cloud, tmp_path):
    """The recipe's VOCAB_FILE=gs://B/vocab.txt: learned from text on gs:// (as from the same
    text on disk), written there, and accepted by pretraining's config check."""
    from conftest import demo_config

    from bert_jax.data.tokenization import WordPieceTokenizer
    from bert_jax.pretraining.config import validate_pretraining_config, vocab_size

    bucket = cloud["bucket"]
    on_gs = [f"gs://{bucket}/corpus/part-{i}.txt" for i in (0, 1)]
    on_disk = [tmp_path / f"part-{i}.txt" for i in (0, 1)]
    for path, text in zip(on_disk, cloud["corpus"], strict=True):
        path.write_text(text)
    tokenizer = WordPieceTokenizer.train(on_gs, vocab_size=400)
    vocab = f"gs://{bucket}/vocabularies/vocab.txt"
    tokenizer.save_vocab(vocab)
    tokenizer.save_vocab(tmp_path / "from_gs.txt")
    WordPieceTokenizer.train(on_disk, vocab_size=400).save_vocab(tmp_path / "from_disk.txt")
    assert (tmp_path / "from_gs.txt").read_text() == (tmp_path / "from_disk.txt").read_text()
    assert vocab_size(vocab) == tokenizer.vocab_size == 400
    config = demo_config("test")
    config.data.vocab_file = vocab
    validate_pretraining_config(config, num_devices=1)
    config.model.vocab_size = 399
    with pytest.raises(UserError, match="has 400 tokens but model.vocab_size is 399"):
        validate_pretraining_config(config, num_devices=1)


@pytest.mark.parametrize(
    "accelerator, gcloud_type, runtime",
    [
        ("v5e-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5e:4x4", "v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5litepod-8", "v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v5p-32", "v5p-32", "v2-alpha-tpuv5"),
        ("v5p:2x2x4", "v5p-32", "v2-alpha-tpuv5"),
        ("v4-32", "v4-32", "tpu-ubuntu2204-base"),
        ("v6e-8", "v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_create_takes_the_planners_names(tmp_path, accelerator, gcloud_type, runtime):
    env = dict(os.environ, FAKE_TPU_CLOUD=str(tmp_path), ACCELERATOR=accelerator, SPOT="1")
    env["CREATE_ARGS"] = "--service-account=sa@p.iam.gserviceaccount.com"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gcloud").write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    (tmp_path / "bin" / "gcloud").chmod(0o755)
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    result = subprocess.run([str(SCRIPT), "create"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    created = json.loads((tmp_path / "vm.json").read_text())
    assert (created["accelerator-type"], created["version"]) == (gcloud_type, runtime)
    assert "spot" in created and created["zone"] == "us-west4-a"
    assert created["service-account"] == "sa@p.iam.gserviceaccount.com"
    result = subprocess.run(
        [str(SCRIPT), "create"], env=dict(env, ACCELERATOR="v9-8"), capture_output=True, text=True
    )
    assert result.returncode == 2 and "ACCELERATOR=v9-8" in result.stderr


def test_setup_installs_a_python_the_dependencies_support(vm):
    """The image's python3 is 3.10; setup's venv is 3.11 (uv), with bert_jax installed editable
    from the worker's copy of the checkout, and its CLI runs."""
    out = vm["setup_output"]
    for worker in (0, 1):
        home = vm["root"] / f"worker-{worker}"
        python = home / "bert_jax" / ".venv" / "bin" / "python"
        assert f"t1v-worker-{worker}: Python 3.11" in out, out
        probe = subprocess.run(
            [python, "-c", "import sys, bert_jax; print(sys.version_info[:2], bert_jax.__file__)"],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
            cwd=vm["root"],  # bert_jax from the editable install, not from the folder
        )
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split(")")[0] == "(3, 11"
        assert probe.stdout.split()[-1] == str(home / "bert_jax" / "bert_jax" / "__init__.py")
        result = subprocess.run(
            [python, "-m", "bert_jax.pretrain", "--help"],
            capture_output=True,
            text=True,
            cwd=vm["root"],
        )
        # absl's --help exits 1 after printing the flags
        assert "--workdir" in result.stdout and not result.stderr, result.stderr[-2000:]
    version = subprocess.run(
        [vm["root"] / "bin" / "python3", "--version"], capture_output=True, text=True
    )
    assert "3.10" in version.stdout + version.stderr, vm["image_python"]


def test_the_documented_sequence_survives_a_preemption(vm):
    """prepare (learning the vocabulary onto gs://), train detached on both workers, a
    preemption (SIGTERM to both through `stop`), `train` again: the run logs exactly what an
    unbroken run logs."""
    bucket = vm["bucket"]
    out = _verb(vm, "prepare", VOCAB_SIZE="1000")
    assert re.search(r"vocab: \d+ tokens written to gs://", out), out[-3000:]
    vocab = epath.Path(f"gs://{bucket}/vocab.txt").read_text().split("\n")
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(vocab) > 500

    # Preempted first, while the compilation cache is cold: the SIGTERM lands mid-run.
    started = time.monotonic()
    out = _verb(vm, "train", *TRAIN_FLAGS)  # RUN=bert
    assert time.monotonic() - started < 60 and out.count("started bert") == 2, out
    _wait_for(vm, "bert", "compiled and ran the first train step")  # printed by process 0
    vm["seconds"]["to the first step"] = round(time.monotonic() - started, 1)
    out = _verb(vm, "stop")  # SIGTERM to both, as a preemption or maintenance sends it
    assert out.count("bert stopped, exit status 0") == 2, out
    assert "jax.distributed: 2 processes, 2 devices" in _log(vm, 0, "bert")
    stopped = int(_log(vm, 0, "bert").split("preempted: saved step ")[1].split()[0])
    assert 0 < stopped < STEPS
    status = _verb(vm, "status")
    assert status.count("bert exited with status 0") == 2, status
    assert f"of {STEPS} logged; the last stop saved step {stopped}" in status, status

    # Then the VM itself is taken back (spot): keepalive recreates it, sets it up and resumes
    # (`train` on a VM that is still there resumes the same way).
    vm_json = vm["root"] / "vm.json"
    vm_json.write_text(json.dumps(dict(json.loads(vm_json.read_text()), state="PREEMPTED")))
    started = time.monotonic()
    out = _verb(vm, "keepalive", *TRAIN_FLAGS, POLL_SECONDS="2", timeout=600)
    vm["seconds"]["keepalive"] = round(time.monotonic() - started, 1)
    assert "the TPU VM is PREEMPTED; creating it again" in out, out[-3000:]
    assert out.count("started bert") == 2 and "keepalive: the run is complete" in out, out[-3000:]
    _wait_until_exited(vm, "bert")
    assert f"resumed from gs://{bucket}/runs/bert/checkpoints/{stopped}" in _log(vm, 0, "bert")
    assert f"run gs://{bucket}/runs/bert: complete" in _verb(vm, "status")
    assert "resumed from" in _verb(vm, "logs", "200")

    _verb(vm, "train", *TRAIN_FLAGS, RUN="unbroken")
    started = time.monotonic()
    _wait_until_exited(vm, "unbroken")
    vm["seconds"]["unbroken run"] = round(time.monotonic() - started, 1)
    status = _verb(vm, "status", RUN="unbroken")
    assert status.count("unbroken exited with status 0") == 2, status
    assert f"run gs://{bucket}/runs/unbroken: complete" in status, status

    from bert_jax.training.metrics import read_metrics

    want = read_metrics(f"gs://{bucket}/runs/unbroken")
    got = read_metrics(f"gs://{bucket}/runs/bert")
    assert [r["step"] for r in got] == [r["step"] for r in want] and len(want) == 6
    for g, w in zip(got, want, strict=True):
        for key in set(w) - TIMING_KEYS:
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (w["step"], key)
    # Each host's log is kept beside the run.
    logs = epath.Path(f"gs://{bucket}/runs/bert/logs")
    assert sorted(p.name for p in logs.iterdir()) == ["t1v-worker-0.log", "t1v-worker-1.log"]
    assert "resumed from" in (logs / "t1v-worker-0.log").read_text()
