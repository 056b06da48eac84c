"""metrics.jsonl and its object-store form: writes that scale, and crashes that corrupt nothing.

Local workdirs append one line per record; gs:// workdirs write bounded part files, checked here
against a real GCS API (the suite's fake-gcs-server on 127.0.0.1, tests/conftest.py).
"""

import gc
import json
import subprocess
import sys

import pytest

from bert_jax.training import metrics
from bert_jax.training.metrics import MetricWriter, load_metrics, read_metrics


def _records(n, start=1, eval_every=0):
    for step in range(start, start + n):
        yield step, {"loss": 10.0 / step, "learning_rate": 1e-3}
        if eval_every and step % eval_every == 0:
            yield step, {"eval_loss": 9.0 / step}


def test_local_writer_appends_and_reader_keeps_the_later_record(tmp_path):
    writer = MetricWriter(tmp_path, enabled=True)
    for step, scalars in _records(4):
        writer.write(step, scalars)
    writer.close()
    writer = MetricWriter(tmp_path, enabled=True)  # a resumed run repeats steps 3 and 4
    writer.write(3, {"loss": 0.5})
    writer.write(4, {"loss": 0.25, "nan": float("nan")})
    writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["loss"] == 0.5 and records[3] == {"step": 4, "loss": 0.25, "nan": None}


def test_torn_last_line_never_merges_with_the_next_runs_first_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricWriter(tmp_path, enabled=True)
    writer.write(1, {"loss": 2.0})
    writer.close()
    with open(path, "a") as f:  # a process killed in the middle of writing step 2
        f.write('{"step": 2, "loss": 1.9')
    writer = MetricWriter(tmp_path, enabled=True)  # the next run
    writer.write(2, {"loss": 1.8})
    writer.write(3, {"loss": 1.7})
    writer.close()
    log = load_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in log.records] == [(1, 2.0), (2, 1.8), (3, 1.7)]
    assert log.malformed == {str(path): 1}
    assert "skipped 1 malformed metrics line" in log.warning()


def test_reader_skips_and_counts_garbage(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 1.0}\nnot json\n[1, 2]\n{"loss": 3}\n{"step": "x"}\n\n'
        '{"step": 2, "eval_loss": 0.5}\n'
    )
    log = load_metrics(tmp_path)
    assert [r["step"] for r in log.records] == [1, 2]
    assert log.malformed_lines == 4


def test_object_store_writes_are_bounded_parts(tmp_path, monkeypatch):
    """A non-local workdir (here a local path the writer treats as remote) never rewrites more
    than one part of records_per_part records, and never appends."""
    monkeypatch.setattr(metrics, "is_remote", lambda path: True)
    written = []
    real_write_text = type(metrics.epath.Path(tmp_path)).write_text

    def spy(self, data, *args, **kwargs):
        if self.parent.name == metrics.METRICS_PARTS:
            written.append((self.name, data.count("\n")))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(type(metrics.epath.Path(tmp_path)), "write_text", spy)
    writer = MetricWriter(tmp_path, enabled=True, records_per_part=4)
    for step, scalars in _records(10):
        writer.write(step, scalars)
    writer.close()
    assert max(lines for _, lines in written) == 4
    assert [name for name, _ in written][-1] == "part-00002.jsonl"
    assert not (tmp_path / "metrics.jsonl").exists()
    writer = MetricWriter(tmp_path, enabled=True, records_per_part=4)  # resumed: a new part
    writer.write(10, {"loss": 0.0})
    writer.close()
    assert written[-1] == ("part-00003.jsonl", 1)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert records[-1]["loss"] == 0.0


@pytest.fixture
def gcs_bucket(gcs, tmp_path):
    """A folder of its own in the suite's GCS emulator bucket (tests/conftest.py)."""
    bucket, _ = gcs
    yield f"gs://{bucket}/{tmp_path.name}"
    gc.collect()  # tensorboardX's GCS writers upload again when collected: while it runs


def test_gcs_workdir_writes_parts_that_readers_merge(gcs_bucket):
    from etils import epath

    workdir = f"{gcs_bucket}/run"
    writer = MetricWriter(workdir, enabled=True, records_per_part=3)
    for step, scalars in _records(5, eval_every=2):
        writer.write(step, scalars)
    writer.close()
    writer = MetricWriter(workdir, enabled=True, records_per_part=3)  # the resumed run
    writer.write(5, {"loss": 0.125})
    writer.write(6, {"loss": 0.0625})
    writer.close()
    del writer
    root = epath.Path(workdir)
    parts = sorted(p.name for p in (root / "metrics").iterdir())
    assert parts == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl", "part-00003.jsonl"]
    assert [len((root / "metrics" / p).read_text().splitlines()) for p in parts] == [3, 3, 1, 2]
    assert not (root / "metrics.jsonl").exists()
    log = load_metrics(workdir)
    assert log.malformed_lines == 0
    train = [(r["step"], r["loss"]) for r in log.records if "loss" in r]
    assert train == [(1, 10.0), (2, 5.0), (3, 10 / 3), (4, 2.5), (5, 0.125), (6, 0.0625)]
    assert [r["step"] for r in log.records if "eval_loss" in r] == [2, 4]
    events = [p.name for p in (root / "tensorboard").iterdir()]
    assert any(name.endswith(".part00000") for name in events), events


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it is installed (seconds of every run's start-up); the
    writer keeps it out and still writes the TensorBoard event file, and torch imports after."""
    pytest.importorskip("torch")
    script = f"""
import sys
from bert_jax.training.metrics import MetricWriter
writer = MetricWriter({str(tmp_path)!r}, enabled=True)
writer.write(1, {{"loss": 2.5}})
writer.close()
assert "torch" not in sys.modules, "torch was imported"
import torch
print("torch", torch.__version__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch " in result.stdout
    from tensorboardX.proto.event_pb2 import Event

    (event_file,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    data, scalars = event_file.read_bytes(), []
    while data:  # TFRecord framing: length (8 bytes), its CRC (4), the record, its CRC (4)
        length = int.from_bytes(data[:8], "little")
        event = Event.FromString(data[12 : 12 + length])
        scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        data = data[16 + length :]
    assert scalars == [(1, "loss", 2.5)]
