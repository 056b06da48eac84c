"""Running the units as an Apache Beam pipeline (`pip install 'bert_jax[beam]'`).

  python -m bert_jax.data.prepare ... --beam_pipeline_options=runner=DataflowRunner,project=P,...

Each unit is one Beam element: a worker tokenizes it and writes its shards straight into the
dataset's directory (gs:// for Dataflow, Spark or Flink), with the very `UnitTask` the local
path runs, so the result is the same dataset, example for example. The units' counts come back
through one small JSON file; the parent then writes the metadata as on one machine.
"""

from __future__ import annotations

import json
import logging
import shlex

from etils import epath

from bert_jax.data.corpus.reader import Unit
from bert_jax.data.corpus.writer import UnitTask
from bert_jax.errors import UserError

RESULTS_FILE = "unit_results.json"


def pipeline_flags(options: str) -> list[str]:
    """`runner=DirectRunner,direct_num_workers=2` (as `tfds build`) or `--runner=... --x=y`."""
    options = options.strip()
    if options.startswith("--"):
        return shlex.split(options)
    return [f"--{part.strip()}" for part in options.split(",") if part.strip()]


def _write_results(results: list[str], path: str) -> None:
    epath.Path(path).write_text("[" + ",".join(results) + "]")


class _RunUnit:
    def __init__(self, task: UnitTask):
        self.task = task

    def __call__(self, unit: Unit) -> str:
        return json.dumps(self.task(unit))


def run_units(task: UnitTask, units: list[Unit], options: str) -> list[dict]:
    """Runs every unit on the Beam runner `options` name; returns results in unit order."""
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise UserError(
            "--beam_pipeline_options needs Apache Beam: pip install 'bert_jax[beam]'"
        ) from None
    for name in ("apache_beam", "apache_beam.runners"):
        logging.getLogger(name).setLevel(logging.WARNING)
    flags = pipeline_flags(options)
    try:
        pipeline_options = PipelineOptions(flags)
    except Exception as err:  # Beam's own option errors
        raise UserError(f"--beam_pipeline_options={options}: {err}") from None
    results_path = str(epath.Path(task.output_dir) / RESULTS_FILE)
    with beam.Pipeline(options=pipeline_options) as pipeline:
        _ = (
            pipeline
            | "Units" >> beam.Create(units)
            | "Spread" >> beam.Reshuffle()
            | "TokenizeAndWrite" >> beam.Map(_RunUnit(task))
            | "Collect" >> beam.combiners.ToList()
            | "WriteCounts" >> beam.Map(_write_results, results_path)
        )
    path = epath.Path(results_path)
    results = sorted(json.loads(path.read_text()), key=lambda r: r["unit"])
    path.unlink()
    if [r["unit"] for r in results] != [u.index for u in units]:
        raise RuntimeError(f"the Beam pipeline returned {len(results)} of {len(units)} units")
    return results
