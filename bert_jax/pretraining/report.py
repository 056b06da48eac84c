"""What a pretraining run learned, in a few lines (`python -m bert_jax.report`): held-out
accuracies at the first and last evaluation, fill-mask on a few prompts, what to try next."""

from __future__ import annotations

import argparse

from bert_jax import entry
from bert_jax.errors import UserError

DEMO_PROMPTS = (
    "in the beginning god created the [MASK].",
    "and god said, let there be [MASK]: and there was light.",
    "the lord is my [MASK]; i shall not want.",
)


def _seconds(records: list[dict]) -> float:
    """Training seconds, from the logged steps/s (compilation and evaluation excluded)."""
    total, previous = 0.0, 0
    for record in records:
        rate = record.get("steps_per_sec")
        if rate and rate > 0:
            total += (record["step"] - previous) / rate
        previous = record["step"]
    return total


def learned(workdir) -> list[str]:
    """Lines on the run's held-out accuracies, from its metrics."""
    from bert_jax.training import plots

    run = plots.load_run(workdir)
    evals = [r for r in run.eval if "eval_mlm_accuracy" in r]
    if not evals:
        raise UserError(f"{workdir} has no held-out evaluation yet (config.eval_every_steps)")
    first, last = evals[0], evals[-1]
    train_steps = run.train[-1]["step"] if run.train else last["step"]
    minutes, seconds = divmod(round(_seconds(run.train)), 60)
    lines = [
        f"{workdir}: {train_steps} steps, {minutes} min {seconds:02d} s of training "
        "(compilation and evaluation apart)",
        "held-out masked-LM accuracy (share of masked word pieces guessed exactly): "
        + " -> ".join(f"{r['eval_mlm_accuracy']:.3f} at step {r['step']}" for r in (first, last)),
    ]
    if "eval_nsp_accuracy" in last:
        lines.append(
            f"held-out next-sentence accuracy (50% = chance): {first['eval_nsp_accuracy']:.3f}"
            f" -> {last['eval_nsp_accuracy']:.3f}"
        )
    return lines


def fill_masks(workdir, prompts) -> list[str]:
    import bert_jax

    fill = bert_jax.pipeline("fill-mask", workdir, top_k=5)
    lines = []
    for prompt, candidates in zip(prompts, fill(list(prompts)), strict=True):
        top = "  ".join(f"{c['token_str']} {c['score']:.2f}" for c in candidates)
        lines += [f"  {prompt}", f"      {top}"]
    return lines


def next_steps(workdir) -> list[str]:
    return [
        f"  curves:            python -m bert_jax.plot {workdir} --out {workdir}/curves.png",
        f"  fill your own:     python -c \"import bert_jax; print(bert_jax.pipeline('fill-mask',"
        f" '{workdir}')(['the [MASK] of the lord']))\"",
        "  train longer:      add --config.num_train_steps=6000 (a new --workdir: the schedule"
        " changes)",
        f"  fine-tune, export: docs/pretraining.md (steps 6 and 7) with {workdir}",
        "  your own corpus:   docs/pretraining.md; the notebook: make notebook",
    ]


def report(workdir, prompts=DEMO_PROMPTS) -> str:
    return "\n".join(
        ["", "What the model learned", *learned(workdir), "", "Fill-mask (top 5):"]
        + fill_masks(workdir, prompts)
        + ["", "What to try next:", *next_steps(workdir)]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bert_jax.report",
        description="Held-out accuracies and fill-mask examples of a pretraining run.",
    )
    parser.add_argument("workdir", help="a pretraining --workdir")
    parser.add_argument(
        "--prompt",
        action="append",
        help="a text with one [MASK] (repeatable; default: three verses of the demo corpus)",
    )
    args = parser.parse_args(argv)
    with entry.user_errors():
        entry.quiet_logging()
        print(report(args.workdir, tuple(args.prompt or DEMO_PROMPTS)))
    return 0
