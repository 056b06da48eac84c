r"""Training curves of one or more runs, side by side, from their WORKDIR/metrics.jsonl.

  python -m bert_jax.plot runs/demo [runs/other ...] --out curves.png [--smooth 0.6]

Pretraining runs get six panels: loss, masked-LM accuracy, next-sentence accuracy (training
solid, evaluation dashed with markers), learning rate, throughput (tokens/s) and gradient norm.
Fine-tuning runs (no MLM metrics) get loss, task accuracy, the other dev scores (macro-F1, MCC,
Pearson, F1, ...), learning rate, examples/s and gradient norm. Each run has one colour; a panel
whose metrics no run logged says so instead of staying blank. TensorBoard reads the same
workdirs (`tensorboard --logdir runs`, from WORKDIR/tensorboard). In a notebook,
`plot_runs(["runs/demo"])` returns the figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import sys

import matplotlib
from etils import epath

from bert_jax.errors import UserError
from bert_jax.metrics import read_metrics

OTHER_EVAL_SCORES = "eval_*"  # a panel key: every eval_ metric that no other panel shows
_NOT_SCORES = {"eval_batches"}


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
    Panel("Accuracy", "accuracy", "eval_accuracy", "accuracy"),
    Panel("Dev scores", None, OTHER_EVAL_SCORES, "score"),
    _LEARNING_RATE,
    Panel("Throughput", "examples_per_sec", None, "examples / s", from_zero=True),
    _GRAD_NORM,
)


class MissingMetricsError(UserError):
    """A workdir given to the plotter has no metrics.jsonl (or an empty one)."""


@dataclasses.dataclass
class Run:
    """One workdir's metrics split into training and evaluation records, by step."""

    label: str
    train: list[dict]
    eval: list[dict]

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


def load_run(workdir, label: str | None = None) -> Run:
    """Reads WORKDIR/metrics.jsonl (local or gs://); raises MissingMetricsError if it is absent
    or empty."""
    workdir = _as_path(workdir)
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        hint = "" if workdir.is_dir() else " (the directory does not exist)"
        raise MissingMetricsError(
            f"{path} not found{hint}: pass the --workdir of a pretraining or fine-tuning run, "
            "which writes metrics.jsonl at its first log step"
        )
    records = read_metrics(workdir)
    if not records:
        raise MissingMetricsError(
            f"{path} has no records yet: wait for the run's first log step (config.log_every_steps)"
        )
    is_eval = lambda r: any(k.startswith("eval_") for k in r)
    return Run(
        label=label or workdir.name,
        train=[r for r in records if not is_eval(r)],
        eval=[r for r in records if is_eval(r)],
    )


def panels_for(runs: list[Run]) -> tuple[Panel, ...]:
    """Pretraining panels when any run logged MLM metrics, fine-tuning panels otherwise."""
    keys = set().union(*(run.keys() for run in runs))
    if keys & {"mlm_accuracy", "eval_mlm_accuracy", "mlm_loss"}:
        return PRETRAINING_PANELS
    return FINETUNING_PANELS


def _as_path(path) -> epath.Path:
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


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
    if panel.eval_key != OTHER_EVAL_SCORES:
        return [panel.eval_key] if panel.eval_key else []
    shown = {p.eval_key for p in panels} | _NOT_SCORES
    logged = set().union(*(run.keys() for run in runs))
    return sorted(k for k in logged if k.startswith("eval_") and k not in shown)


_EVAL_MARKERS = ("o", "s", "^", "D", "v", "P")


def _draw_panel(ax, panel: Panel, eval_keys: list[str], runs: list[Run], smooth: float) -> None:
    """One panel: a solid training line and dashed evaluation line(s) per run."""
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn: list[float] = []
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        if panel.train_key:
            steps, values = run.series(panel.train_key, evaluation=False)
            if steps:
                label = f"{run.label} train" if eval_keys else run.label
                curve = _ema(values, smooth if panel.smoothable else 0.0)
                ax.plot(steps, curve, color=color, lw=1.4, label=label)
                drawn += values
        for j, key in enumerate(eval_keys):
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
    workdirs = [_as_path(w) for w in workdirs]
    if not workdirs:
        raise UserError("no workdir given: pass at least one run directory")
    labels = _unique_labels(workdirs)
    runs = [load_run(w, label) for w, label in zip(workdirs, labels, strict=True)]
    panels = panels_for(runs)

    import matplotlib.pyplot as plt  # the caller's backend: inline in notebooks, Agg in the CLI

    ncols = 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    last_step = max(r["step"] for run in runs for r in run.train + run.eval)
    for panel, ax in zip(panels, axes.flat[: len(panels)], strict=True):
        _draw_panel(ax, panel, _eval_keys(panel, panels, runs), runs, smooth)
        ax.set_xlim(0, last_step * 1.03)  # one step axis, so panels line up by eye
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    if title is None:
        title = "  vs  ".join(r.label for r in runs)
        if smooth:
            title += f"   (training curves smoothed: EMA {smooth:g})"
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    if out is not None:  # local or gs://
        out = _as_path(out)
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
    try:
        plot_runs(args.workdirs, out=args.out, smooth=args.smooth, title=args.title)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
