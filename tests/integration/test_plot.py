"""bert_jax.plot: curves of synthetic runs to PNG, and the missing-metrics error path."""

import json
import math
import pathlib
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bert_jax.errors import UserError  # noqa: E402
from bert_jax.training import plots as plot  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def write_run(workdir, num_steps=200, log_every=10, eval_every=50, scale=1.0, resumed_at=None):
    """A metrics.jsonl shaped like train_lib's: training records, then eval records per step."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(log_every, num_steps + 1, log_every):
        progress = step / num_steps
        loss = scale * (10.0 * math.exp(-3 * progress) + 2.0)
        lines.append(
            {
                "step": step,
                "loss": loss,
                "mlm_loss": loss - 0.6,
                "mlm_accuracy": 0.5 * (1 - math.exp(-3 * progress)),
                "nsp_loss": 0.6,
                "nsp_accuracy": 0.5 + 0.3 * progress,
                "learning_rate": 1e-3 * min(1.0, step / 50) * (1 - progress),
                "grad_norm": 3.0 * math.exp(-progress),
                "steps_per_sec": 5.0,
                "tokens_per_sec": 5.0 * 32 * 128 / scale,
                "examples_per_sec": 160.0,
                "mfu": None,  # non-finite values are written as null
            }
        )
        if step % eval_every == 0:
            lines.append(
                {
                    "step": step,
                    "eval_loss": loss + 0.3,
                    "eval_mlm_accuracy": 0.45 * (1 - math.exp(-3 * progress)),
                    "eval_nsp_accuracy": 0.5 + 0.25 * progress,
                    "eval_batches": 20,
                }
            )
    if resumed_at is not None:
        # Preempted 20 steps after its checkpoint at resumed_at, the run logged those steps once
        # before the restart (stale values) and again after it; the later records must win.
        stale = [
            dict(r, loss=r["loss"] + 100) if "loss" in r and r["step"] > resumed_at else r
            for r in lines
            if r["step"] <= resumed_at + 20
        ]
        lines = stale + [r for r in lines if r["step"] > resumed_at]
    with open(workdir / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    return lines


def test_load_run_splits_train_and_eval(tmp_path):
    write_run(tmp_path / "a", num_steps=100, resumed_at=60)
    run = plot.load_run(tmp_path / "a")
    assert run.label == "a"
    assert [r["step"] for r in run.train] == list(range(10, 101, 10))  # duplicates collapsed
    assert run.train[6]["step"] == 70 and run.train[6]["loss"] < 10
    assert [r["step"] for r in run.eval] == [50, 100]
    steps, values = run.series("eval_mlm_accuracy", evaluation=True)
    assert steps == [50, 100]
    np.testing.assert_allclose(values, [0.45 * (1 - math.exp(-1.5)), 0.45 * (1 - math.exp(-3))])
    assert run.series("mfu", evaluation=False) == ([], [])  # all null: nothing to draw


def test_plot_two_runs_writes_png(tmp_path):
    written = write_run(tmp_path / "small", scale=1.0)
    write_run(tmp_path / "large", num_steps=300, scale=1.3)
    out = tmp_path / "figs" / "curves.png"
    fig = plot.plot_runs([tmp_path / "small", tmp_path / "large"], out=out, smooth=0.5)
    try:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 40_000 < out.stat().st_size < 2_000_000
        width, height = (fig.get_size_inches() * 110).round()
        image = plt.imread(out)
        assert image.shape[:2] == (height, width)
        # One train line per run on every panel, plus a dashed eval line on the first three.
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert [len(ax.get_lines()) for ax in visible] == [4, 4, 4, 2, 2, 2]
        assert visible[0].get_legend() is not None
        train_small = visible[0].get_lines()[0]
        assert train_small.get_label() == "small train"
        assert list(train_small.get_xdata()) == list(range(10, 201, 10))
        lr = [r["learning_rate"] for r in written if "learning_rate" in r]
        np.testing.assert_allclose(visible[3].get_lines()[0].get_ydata(), lr)  # never smoothed
        assert visible[1].get_lines()[0].get_ydata()[1] < written[1]["mlm_accuracy"]  # smoothed
        assert visible[4].get_ylim()[0] == 0  # throughput from zero
        assert visible[5].get_yscale() == "linear"  # gradient norm spans < 20x
    finally:
        plt.close(fig)


def test_smoothing_is_debiased_ema():
    assert plot._ema([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    assert plot._ema([0.0, 2.0], 0.5) == pytest.approx([0.0, 2.0 * 0.5 / 0.75])
    assert plot._ema([3.0, 5.0], 0.0) == [3.0, 5.0]


def test_same_named_runs_get_distinct_labels(tmp_path):
    write_run(tmp_path / "x" / "run")
    write_run(tmp_path / "y" / "run")
    fig = plot.plot_runs([tmp_path / "x" / "run", tmp_path / "y" / "run"])
    try:
        labels = [line.get_label() for line in fig.axes[3].get_lines()]
        assert labels == [str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")]
    finally:
        plt.close(fig)


def write_finetuning_run(workdir):
    """Shaped like finetune_lib's metrics.jsonl for a classification task."""
    workdir.mkdir(parents=True)
    records = []
    for step in (5, 10, 15, 20):
        records.append({"step": step, "loss": 1.2 - 0.03 * step, "accuracy": 0.3 + 0.02 * step,
                        "learning_rate": 2e-5, "grad_norm": 4.0, "steps_per_sec": 2.0,
                        "examples_per_sec": 64.0})  # fmt: skip
    for step in (10, 20):
        records.append({"step": step, "eval_accuracy": 0.5 + 0.01 * step, "eval_macro_f1": 0.4,
                        "eval_mcc": 0.2, "eval_loss": 1.0})  # fmt: skip
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_finetuning_runs_get_task_panels(tmp_path):
    write_finetuning_run(tmp_path / "sentiment")
    fig = plot.plot_runs(tmp_path / "sentiment")
    try:
        titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
        expected = [p.title for p in plot.FINETUNING_PANELS]
        expected[1] = "Dev accuracy (main metric)"
        assert titles == expected
        accuracy, scores, throughput = fig.axes[1], fig.axes[2], fig.axes[4]
        assert [line.get_label() for line in accuracy.get_lines()] == [
            "sentiment train",
            "sentiment eval",
        ]
        np.testing.assert_allclose(accuracy.get_lines()[1].get_ydata(), [0.6, 0.7])
        # Dev scores shown nowhere else, one marker each; loss and accuracy have their panels.
        assert [line.get_label() for line in scores.get_lines()] == [
            "sentiment macro_f1",
            "sentiment mcc",
        ]
        assert scores.get_lines()[0].get_marker() != scores.get_lines()[1].get_marker()
        assert throughput.get_ylabel() == "examples / s"
        assert {ax.get_xlim() for ax in fig.axes} == {(0, 20 * 1.03)}  # one step axis
    finally:
        plt.close(fig)


def test_panel_without_metrics_says_not_logged(tmp_path):
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    fig = plot.plot_runs([tmp_path / "ft"])
    try:
        assert len(fig.axes[0].get_lines()) == 1
        assert "not logged" in fig.axes[1].texts[0].get_text()
        assert "not logged" in fig.axes[2].texts[0].get_text()
    finally:
        plt.close(fig)


def test_a_one_record_series_is_drawn_as_a_point(tmp_path):
    """A line through a single point draws nothing: one record gets a marker, longer series
    stay plain lines."""
    for name, steps in (("one", [5]), ("two", [5, 10])):
        (tmp_path / name).mkdir()
        records = [json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in steps]
        (tmp_path / name / "metrics.jsonl").write_text("".join(records))
    fig = plot.plot_runs([tmp_path / "one", tmp_path / "two"])
    try:
        one, long = fig.axes[0].get_lines()[:2]
        assert list(one.get_xdata()) == [5] and one.get_marker() == "o"
        assert one.get_markersize() > 0
        assert len(long.get_xdata()) == 2 and long.get_marker() in (None, "None", "")
    finally:
        plt.close(fig)


def test_missing_metrics_raises_user_error(tmp_path):
    write_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty/metrics.jsonl not found"):
        plot.plot_runs([tmp_path / "good", tmp_path / "empty"])
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(plot.MissingMetricsError, match="no records yet"):
        plot.load_run(tmp_path / "empty")
    with pytest.raises(UserError, match=r"smooth must be in \[0, 1\)"):
        plot.plot_runs([tmp_path / "good"], smooth=1.0)


def test_cli_writes_png_and_exits_2_on_missing_workdir(tmp_path):
    write_run(tmp_path / "run")
    out = tmp_path / "cli.png"
    cmd = [sys.executable, "-m", "bert_jax.plot", str(tmp_path / "run"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 40_000
    missing = tmp_path / "nowhere"
    cmd = [sys.executable, "-m", "bert_jax.plot", str(missing), "--out", str(tmp_path / "x.png")]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {missing / 'metrics.jsonl'} not found (the directory does not exist): pass the "
        "--workdir of a pretraining or fine-tuning run, which writes metrics.jsonl at its first "
        "log step"
    ]
    assert not (tmp_path / "x.png").exists()


def test_pretraining_and_finetuning_runs_get_their_own_panels(tmp_path):
    """README step 5, `plot runs/base runs/sst`: the fine-tuning run's accuracy must show."""
    write_run(tmp_path / "base", num_steps=200)
    write_finetuning_run(tmp_path / "sst")
    fig = plot.plot_runs([tmp_path / "base", tmp_path / "sst"])
    try:
        visible = [ax for ax in fig.axes if ax.get_visible()]
        titles = [ax.get_title() for ax in visible]
        assert titles[:6] == [f"pretraining: {p.title}" for p in plot.PRETRAINING_PANELS]
        assert titles[6:8] == ["fine-tuning: Loss", "fine-tuning: Dev accuracy (main metric)"]
        assert "fine-tuning: Learning rate" in titles
        main = visible[7]
        assert [line.get_label() for line in main.get_lines()] == ["sst train", "sst eval"]
        np.testing.assert_allclose(main.get_lines()[1].get_ydata(), [0.6, 0.7])
        # The pretraining panels hold only the pretraining run, on its own step axis.
        assert {line.get_label().split()[0] for ax in visible[:6] for line in ax.get_lines()} == {
            "base"
        }
        assert visible[0].get_xlim() == (0, 200 * 1.03) and main.get_xlim() == (0, 20 * 1.03)
    finally:
        plt.close(fig)


def test_main_metric_comes_from_task_info_and_optional_panels_appear(tmp_path):
    workdir = tmp_path / "stsb"
    workdir.mkdir()
    records = [
        {"step": 5, "loss": 1.0, "learning_rate": 1e-5, "real_tokens_per_sec": 900.0,
         "padding_fraction": 0.25},
        {"step": 5, "eval_pearson": 0.8, "eval_spearman": 0.7, "eval_loss": 0.5},
    ]  # fmt: skip
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "task_info.json").write_text(json.dumps({"main_metric": "pearson"}))
    fig = plot.plot_runs(workdir)
    try:
        by_title = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
        assert [
            line.get_ydata()[0] for line in by_title["Dev pearson (main metric)"].get_lines()
        ] == [0.8]
        assert [line.get_label() for line in by_title["Other dev scores"].get_lines()] == [
            "stsb eval"
        ]
        assert by_title["Real tokens / s (no padding)"].get_lines()[0].get_ydata()[0] == 900.0
        assert by_title["Padding fraction"].get_lines()[0].get_ydata()[0] == 0.25
    finally:
        plt.close(fig)


def test_cli_skips_torn_lines_with_a_warning(tmp_path):
    """A run killed mid-write, then resumed: plot draws it and says what it skipped."""
    write_run(tmp_path / "run")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 210, "loss": 1.2{"step": 210, "loss": 1.1}\n')
    out = tmp_path / "torn.png"
    cmd = [sys.executable, "-m", "bert_jax.plot", str(tmp_path / "run"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "skipped 1 malformed metrics line" in done.stderr
    assert "Traceback" not in done.stderr
    assert out.stat().st_size > 40_000
