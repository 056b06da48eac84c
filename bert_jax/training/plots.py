"""Training curves of runs from their metrics.jsonl (`python -m bert_jax.plot`, or `plot_runs`
in a notebook): pretraining and fine-tuning panels side by side, one colour per run, workdirs
local or on gs://."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys

import matplotlib
from etils import epath

from bert_jax import entry
from bert_jax.errors import UserError
from bert_jax.paths import as_path
from bert_jax.training.metrics import METRICS_FILE, load_metrics, metrics_files

OTHER_EVAL_SCORES = "eval_*"  # a panel key: every eval_ metric that no other panel shows
MAIN_METRIC = "eval_<main>"  # a panel key: each fine-tuning run's own main dev metric
_NOT_SCORES = {"eval_batches", "eval_rows"}


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    train_key: str | None  # logged every log_every_steps
    eval_key: str | None  # logged every eval_every_steps, or OTHER_EVAL_SCORES
    ylabel: str
    from_zero: bool = False  # rates: an axis from 0 keeps run-to-run gaps in proportion
    log_scale_if_wide: bool = False  # spiky metrics: log axis when they span >= 20x
    smoothable: bool = True  # a schedule is exact; smoothing would only shift it


_LEARNING_RATE = Panel(
    "Learning rate", "learning_rate", None, "learning rate", from_zero=True, smoothable=False
)
_GRAD_NORM = Panel(
    "Gradient norm (before clipping)", "grad_norm", None, "global L2 norm", log_scale_if_wide=True
)
PRETRAINING_PANELS = (
    Panel("Loss (MLM + NSP)", "loss", "eval_loss", "loss"),
    Panel("Masked-LM accuracy", "mlm_accuracy", "eval_mlm_accuracy", "accuracy"),
    Panel("Next-sentence accuracy", "nsp_accuracy", "eval_nsp_accuracy", "accuracy"),
    _LEARNING_RATE,
    Panel("Throughput", "tokens_per_sec", None, "tokens / s", from_zero=True),
    _GRAD_NORM,
)
FINETUNING_PANELS = (
    Panel("Loss", "loss", "eval_loss", "loss"),
    Panel("Main dev metric", None, MAIN_METRIC, "score"),
    Panel("Other dev scores", None, OTHER_EVAL_SCORES, "score"),
    _LEARNING_RATE,
    Panel("Throughput", "examples_per_sec", None, "examples / s", from_zero=True),
    _GRAD_NORM,
)
# Drawn for a kind of run only when one of its runs logged them (packed or bucketed batches).
OPTIONAL_PANELS = (
    Panel("Real tokens / s (no padding)", "real_tokens_per_sec", None, "tokens / s",
          from_zero=True),
    Panel("Padding fraction", "padding_fraction", None, "fraction of tokens", from_zero=True),
)  # fmt: skip


class MissingMetricsError(UserError):
    """A workdir given to the plotter has no metrics.jsonl (or an empty one)."""


@dataclasses.dataclass
class Run:
    """One workdir's metrics split into training and evaluation records, by step."""

    label: str
    train: list[dict]
    eval: list[dict]
    main_metric: str | None = None  # fine-tuning: the dev metric that picks the best checkpoint
    color: str | None = None  # one colour per run across all panels

    def series(self, key: str, evaluation: bool) -> tuple[list[int], list[float]]:
        """(steps, values) of `key`, skipping records without it or with a non-finite value."""
        steps, values = [], []
        for record in self.eval if evaluation else self.train:
            value = record.get(key)
            if value is not None and math.isfinite(value):
                steps.append(record["step"])
                values.append(value)
        return steps, values

    def keys(self) -> set[str]:
        return {k for record in self.train + self.eval for k in record}

    @property
    def is_pretraining(self) -> bool:
        return bool(self.keys() & {"mlm_accuracy", "eval_mlm_accuracy", "mlm_loss"})

    def main_keys(self) -> tuple[str | None, str | None]:
        """(training key, evaluation key) of the main dev metric: task_info.json's main_metric,
        else accuracy when logged, else the first dev score."""
        keys = self.keys()
        main = self.main_metric
        if main is None:
            scores = sorted(k.removeprefix("eval_") for k in keys if k.startswith("eval_"))
            scores = [k for k in scores if k not in ("loss", "batches")]
            main = "accuracy" if "accuracy" in scores else (scores[0] if scores else None)
        if main is None:
            return None, None
        return (main if main in keys else None), f"eval_{main}"


def load_run(workdir, label: str | None = None) -> Run:
    """Reads WORKDIR's metrics (local or gs://); raises MissingMetricsError if there are none.
    Malformed lines (a process killed mid-write) are skipped with a warning that counts them."""
    workdir = as_path(workdir)
    path = workdir / METRICS_FILE
    if not metrics_files(workdir):
        hint = "" if workdir.is_dir() else " (the directory does not exist)"
        raise MissingMetricsError(
            f"{path} not found{hint}: pass the --workdir of a pretraining or fine-tuning run, "
            "which writes metrics.jsonl at its first log step"
        )
    log = load_metrics(workdir)
    if log.warning():
        print(f"warning: {log.warning()}", file=sys.stderr)
    if not log.records:
        raise MissingMetricsError(
            f"{path} has no records yet: wait for the run's first log step (config.log_every_steps)"
        )
    main_metric = None
    task_info = workdir / "task_info.json"
    if task_info.exists():
        main_metric = json.loads(task_info.read_text()).get("main_metric")
    is_eval = lambda r: any(k.startswith("eval_") for k in r)
    return Run(
        label=label or workdir.name,
        train=[r for r in log.records if not is_eval(r)],
        eval=[r for r in log.records if is_eval(r)],
        main_metric=main_metric,
    )


def panels_for(runs: list[Run]) -> tuple[Panel, ...]:
    """Pretraining panels when any run logged MLM metrics, fine-tuning panels otherwise; plus
    the optional panels some run logged."""
    keys = set().union(*(run.keys() for run in runs))
    panels = PRETRAINING_PANELS if any(run.is_pretraining for run in runs) else FINETUNING_PANELS
    return panels + tuple(p for p in OPTIONAL_PANELS if p.train_key in keys)


def panel_groups(runs: list[Run]) -> list[tuple[str, list[Run], tuple[Panel, ...]]]:
    """(name, runs, panels) per kind of run present: pretraining first, then fine-tuning."""
    groups = []
    for name, members in (
        ("pretraining", [r for r in runs if r.is_pretraining]),
        ("fine-tuning", [r for r in runs if not r.is_pretraining]),
    ):
        if members:
            groups.append((name, members, panels_for(members)))
    return groups


def _unique_labels(workdirs: list[epath.Path]) -> list[str]:
    """The directory names, or the full paths where two runs share a name."""
    names = [w.name or str(w) for w in workdirs]
    if len(set(names)) == len(names):
        return names
    return [str(w) for w in workdirs]


def _ema(values: list[float], smooth: float) -> list[float]:
    """Exponential moving average, debiased like TensorBoard's smoothing slider."""
    if smooth <= 0:
        return values
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = smooth * average + (1 - smooth) * value
        weight = smooth * weight + (1 - smooth)
        out.append(average / weight)
    return out


def _eval_keys(panel: Panel, panels: tuple[Panel, ...], runs: list[Run]) -> list[str]:
    if panel.eval_key == MAIN_METRIC:
        return sorted({run.main_keys()[1] for run in runs} - {None})
    if panel.eval_key != OTHER_EVAL_SCORES:
        return [panel.eval_key] if panel.eval_key else []
    shown = {p.eval_key for p in panels} | _NOT_SCORES | {run.main_keys()[1] for run in runs}
    logged = set().union(*(run.keys() for run in runs))
    return sorted(k for k in logged if k.startswith("eval_") and k not in shown)


def _panel_title(panel: Panel, eval_keys: list[str], group: str | None) -> str:
    title = panel.title
    if panel.eval_key == MAIN_METRIC and len(eval_keys) == 1:
        title = f"Dev {eval_keys[0].removeprefix('eval_')} (main metric)"
    return f"{group}: {title}" if group else title


_EVAL_MARKERS = ("o", "s", "^", "D", "v", "P")


def _draw_panel(
    ax, panel: Panel, eval_keys: list[str], runs: list[Run], smooth: float, title: str
) -> None:
    """One panel: a solid training line and dashed evaluation line(s) per run."""
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn: list[float] = []
    for i, run in enumerate(runs):
        color = run.color or colors[i % len(colors)]
        train_key, run_eval_keys = panel.train_key, eval_keys
        if panel.eval_key == MAIN_METRIC:  # this run's own metric, whatever the others'
            train_key, main_eval = run.main_keys()
            run_eval_keys = [main_eval] if main_eval else []
        if train_key:
            steps, values = run.series(train_key, evaluation=False)
            if steps:
                label = f"{run.label} train" if run_eval_keys else run.label
                curve = _ema(values, smooth if panel.smoothable else 0.0)
                # A line through one point is invisible: a single record gets a marker.
                marker = "o" if len(steps) == 1 else None
                ax.plot(steps, curve, color=color, lw=1.4, marker=marker, ms=5, label=label)
                drawn += values
        for j, key in enumerate(run_eval_keys):
            steps, values = run.series(key, evaluation=True)
            if steps:
                # Several scores on one panel are told apart by their marker and label.
                name = "eval" if len(eval_keys) == 1 else key.removeprefix("eval_")
                marker = _EVAL_MARKERS[j % len(_EVAL_MARKERS)]
                ax.plot(steps, values, color=color, lw=1.4, ls="--", marker=marker, ms=4,
                        label=f"{run.label} {name}")  # fmt: skip
                drawn += values
    if not drawn:
        keys = " / ".join(k for k in (panel.train_key, panel.eval_key) if k)
        if panel.eval_key in (MAIN_METRIC, OTHER_EVAL_SCORES):
            keys = " / ".join(eval_keys) or "no dev scores"
        ax.text(0.5, 0.5, f"not logged\n({keys})", ha="center", va="center",
                transform=ax.transAxes, color="0.5")  # fmt: skip
        return
    low, high = min(drawn), max(drawn)
    if panel.log_scale_if_wide and low > 0 and high / low >= 20:
        ax.set_yscale("log")
    if panel.from_zero and high > 0:
        ax.set_ylim(bottom=0, top=high * 1.08)
    if panel.ylabel == "learning rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.legend(fontsize=8, loc="best")


def plot_runs(workdirs, out=None, smooth: float = 0.0, title: str | None = None):
    """Draws the panels for the runs in `workdirs`; saves an image when `out` is given.

    Args:
      workdirs: run directories (or one), each holding metrics.jsonl.
      out: path of the image to write (format from the suffix, e.g. .png), or None.
      smooth: 0 <= smooth < 1, EMA weight for the training curves (not evaluation, not the
        learning rate).
      title: figure title; defaults to the run labels.

    Returns:
      The matplotlib Figure (close it with `matplotlib.pyplot.close(fig)` when done).
    """
    if not 0.0 <= smooth < 1.0:
        raise UserError(f"smooth must be in [0, 1), got {smooth}")
    if isinstance(workdirs, str | os.PathLike):
        workdirs = [workdirs]
    workdirs = [as_path(w) for w in workdirs]
    if not workdirs:
        raise UserError("no workdir given: pass at least one run directory")
    labels = _unique_labels(workdirs)
    runs = [load_run(w, label) for w, label in zip(workdirs, labels, strict=True)]
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        run.color = colors[i % len(colors)]
    groups = panel_groups(runs)

    import matplotlib.pyplot as plt  # the caller's backend: inline in notebooks, Agg in the CLI

    ncols = 3
    rows_per_group = [math.ceil(len(panels) / ncols) for _, _, panels in groups]
    nrows = sum(rows_per_group)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    row = 0
    for (name, members, panels), rows in zip(groups, rows_per_group, strict=True):
        group_axes = axes[row : row + rows].flat
        # Each kind keeps its own step axis: fine-tuning runs are far shorter than pretraining.
        last_step = max(r["step"] for run in members for r in run.train + run.eval)
        for panel, ax in zip(panels, group_axes, strict=False):
            eval_keys = _eval_keys(panel, panels, members)
            label = name if len(groups) > 1 else None
            _draw_panel(
                ax, panel, eval_keys, members, smooth, _panel_title(panel, eval_keys, label)
            )
            ax.set_xlim(0, last_step * 1.03)  # one step axis, so panels line up by eye
        for ax in list(axes[row : row + rows].flat)[len(panels) :]:
            ax.set_visible(False)
        row += rows
    if title is None:
        title = "  vs  ".join(r.label for r in runs)
        if smooth:
            title += f"   (training curves smoothed: EMA {smooth:g})"
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    if out is not None:  # local or gs://
        out = as_path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = io.BytesIO()
        fig.savefig(image, dpi=110, format=out.suffix.lstrip(".") or "png")
        out.write_bytes(image.getvalue())
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bert_jax.plot",
        description="Plot loss, accuracy, learning rate and throughput curves of runs.",
    )
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories")
    parser.add_argument("--out", required=True, help="image to write, e.g. curves.png")
    parser.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        help="EMA weight in [0, 1) for the training curves (default 0: raw)",
    )
    parser.add_argument("--title", default=None, help="figure title (default: the run names)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only: no display needed (CI, SSH sessions)
    with entry.user_errors():
        entry.check_output_file(args.out, "--out")
        plot_runs(args.workdirs, out=args.out, smooth=args.smooth, title=args.title)
    print(f"wrote {args.out}")
    return 0
