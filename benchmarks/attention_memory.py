r"""Attention memory against sequence length: materialised vs. memory-linear, forward+backward.

  python -m benchmarks.attention_memory --measure 1024,2048  # compiled sizes, and RSS of real steps

A ModernBERT-shaped encoder (4 layers, hidden 256, 4 heads, window 128 on the local layers, every
3rd global), batch 1, gradient of its output's mean square: attention_implementation "xla"
(materialised [B, N, T, T]) vs. "blockwise". Sizes from XLA's buffer assignment of the compiled
step (arguments + outputs + temporaries); --measure runs a step in its own process for its peak
RSS (skipped, and said so, where the compiled peak is over half the memory available).
Figures: docs/design/attention.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MIB = 2**20
LENGTHS = (1024, 2048, 4096, 8192)
IMPLEMENTATIONS = {"materialised": "xla", "memory-linear": "blockwise"}


def model_config(length: int, implementation: str):
    from bert_jax.model.config import BertConfig

    return BertConfig(
        vocab_size=1024,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=length,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        local_attention_window=128,
        global_attn_every_n_layers=3,
        attention_implementation=implementation,
    )


def compiled_step(length: int, implementation: str):
    """The jitted forward+backward step, compiled, and its arguments' shapes."""
    import jax
    import jax.numpy as jnp

    from bert_jax.model.modeling import BertModel

    model = BertModel(model_config(length, implementation))
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, length), int)))

    def loss(params, ids):
        sequence, _ = model.apply(params, ids)
        return jnp.mean(jnp.square(sequence))

    step = jax.jit(jax.grad(loss))
    return step.lower(params, ids).compile(), params


def compiled_mib(length: int, implementation: str) -> dict[str, float]:
    analysis = compiled_step(length, implementation)[0].memory_analysis()
    temporaries = analysis.temp_size_in_bytes
    peak = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + temporaries
    return {"temporaries": temporaries / MIB, "peak": peak / MIB}


def measured_rss_mib(length: int, implementation: str) -> float | None:
    """Peak RSS of a process that compiles and runs the step once (None if it died)."""
    code = (
        "import resource, sys, jax, jax.numpy as jnp\n"
        "from benchmarks.attention_memory import compiled_step\n"
        f"step, shapes = compiled_step({length}, {implementation!r})\n"
        "params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype) * 0.02, shapes)\n"
        f"jax.block_until_ready(step(params, jnp.ones((1, {length}), jnp.int32)))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if run.returncode:
        print(f"  {implementation} at {length} died: {run.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(run.stdout.split()[-1])


def available_mib() -> float:
    for line in open("/proc/meminfo").read().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--measure", default="", help="lengths to also run, e.g. 1024,2048")
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    measure = {int(x) for x in args.measure.split(",") if x}
    rows = []
    for length in lengths:
        row = {"tokens": length}
        for label, implementation in IMPLEMENTATIONS.items():
            sizes = compiled_mib(length, implementation)
            row[f"{label} peak MiB"] = round(sizes["peak"], 1)
            if measure:
                rss = "-"
                if length in measure and sizes["peak"] > available_mib() / 2:
                    rss = "skipped"
                elif length in measure:
                    rss = measured_rss_mib(length, implementation)
                    rss = "died" if rss is None else round(rss, 1)
                row[f"{label} RSS MiB"] = rss
        rows.append(row)
        print(json.dumps(row), flush=True)
    first = rows[0]
    print(f"\n| {' | '.join(first)} |\n|{'---|' * len(first)}")
    for row in rows:
        print(
            "| "
            + " | ".join(f"{v:,}" if not isinstance(v, str) else v for v in row.values())
            + " |"
        )
    for label in IMPLEMENTATIONS:
        growth = rows[-1][f"{label} peak MiB"] / first[f"{label} peak MiB"]
        print(f"{label}: {first['tokens']:,} -> {rows[-1]['tokens']:,} tokens: x{growth:.1f}")


if __name__ == "__main__":
    main()
