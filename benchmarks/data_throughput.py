r"""Pretraining-data throughput: bert_jax against google-research/bert, side by side.

  python benchmarks/data_throughput.py --reference_dir=/tmp/google-research-bert \
      [--corpus=../shared/data/corpora/kjv.txt] [--vocab=../shared/data/vocab/...] [--json=out.json]

Measures, on the same machine and input (max_seq_length 128, max_predictions_per_seq 20,
masked_lm_prob 0.15, dupe_factor 5 by default):
  * tokenization alone: reference FullTokenizer vs WordPieceTokenizer.encode_lines;
  * end to end, text -> all static-masking examples: reference create_pretraining_data.py
    (tokenize, create_training_instances, write_instance_to_example_files) vs prepare_data
    (tokenize, write the TFDS corpus) + the Grain pipeline over dupe_factor epochs;
  * dynamic masking from the prepared corpus, per CPU second (all threads counted).
Output tokens are the non-padding tokens of the examples. Prints a table and a JSON line.

Preparing large corpora (streaming, on N workers), each table opt-in (minutes to an hour):

  python benchmarks/data_throughput.py --tables=memory [--sizes_gb=0.4,1.6,3.2]
  python benchmarks/data_throughput.py --tables=workers [--workers_gb=0.4 --repeats=2]

  * memory: `python -m bert_jax.data.prepare` (all cores) on inputs of each size made by
    repeating kjv.txt and brown.txt, built in --scratch and deleted after: peak RSS of all its
    processes together (the report's figure: parent + every worker at its peak) and of the
    largest one, wall and CPU time. Targets: <= 1.5 GB at every size, <= 1.2x largest/smallest.
  * workers: the same command with --num_workers=1, 2, ... up to the cores, alternated
    --repeats times on one input: tokens/s (median) and the speed-up over one worker. Target on
    2 cores: 2 workers >= 1.7x one. Wall times on a shared machine are noisy: CPU time is shown.

The reference is not part of bert_jax: get it with
  git clone https://github.com/google-research/bert /tmp/google-research-bert
It needs TensorFlow 1 only for file I/O and tf.train.Example; a stand-in module written to a
temporary directory provides those (protos from tensorflow_datasets), so it runs unmodified.
"""

import argparse
import hashlib
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# A TF1 stand-in: gfile, flags, logging, tf.train.Example (tensorflow_datasets' generated protos,
# loaded by path so that importing them does not import tensorflow_datasets) and a record writer.
_TF_STANDIN = """
import glob, importlib.util, os, sys, types
from absl import flags

def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

_PROTOS = os.environ["TFDS_PROTO_DIR"]
for _package in ("tensorflow_datasets", "tensorflow_datasets.proto"):
    sys.modules.setdefault(_package, types.ModuleType(_package))
_feature = _load("tensorflow_datasets.proto.tf_feature_generated_pb2",
                 os.path.join(_PROTOS, "tf_feature_generated_pb2.py"))
_example = _load("tensorflow_datasets.proto.tf_example_generated_pb2",
                 os.path.join(_PROTOS, "tf_example_generated_pb2.py"))

class _RecordWriter:
    def __init__(self, path):
        self._file = open(path, "wb")
    def write(self, record):
        self._file.write(len(record).to_bytes(8, "little") + record)
    def close(self):
        self._file.close()

def _open(path, mode="r"):
    return open(path, mode, encoding=None if "b" in mode else "utf-8")

gfile = types.SimpleNamespace(GFile=_open, Glob=glob.glob)
logging = types.SimpleNamespace(INFO=20, set_verbosity=lambda v: None, info=lambda *a, **k: None)
app = types.SimpleNamespace(run=lambda: None)
train = types.SimpleNamespace(Example=_example.Example, Features=_feature.Features,
                              Feature=_feature.Feature, Int64List=_feature.Int64List,
                              FloatList=_feature.FloatList)
python_io = types.SimpleNamespace(TFRecordWriter=_RecordWriter)
"""

_REFERENCE_RUN = """
import hashlib, json, random, sys, time
import numpy as np
import create_pretraining_data as cpd
import tokenization
from absl import flags

corpus, vocab, output, dupe_factor = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
flags.FLAGS(["create_pretraining_data"])
tokenizer = tokenization.FullTokenizer(vocab, do_lower_case=True)
with open(corpus, encoding="utf-8") as f:
    lines = [line.strip() for line in f]

wall, cpu = time.perf_counter(), time.process_time()
ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(line)) for line in lines]
tokenize = [time.perf_counter() - wall, time.process_time() - cpu]
flat = np.array([i for line in ids for i in line], np.int32)

wall, cpu = time.perf_counter(), time.process_time()
tokenizer = tokenization.FullTokenizer(vocab, do_lower_case=True)
instances = cpd.create_training_instances(
    [corpus], tokenizer, 128, dupe_factor, 0.1, 0.15, 20, random.Random(12345))
cpd.write_instance_to_example_files(instances, tokenizer, 128, 20, [output])
end_to_end = [time.perf_counter() - wall, time.process_time() - cpu]
print(json.dumps({
    "tokenize_seconds": tokenize, "input_tokens": int(flat.size),
    "ids_sha256": hashlib.sha256(flat.tobytes()).hexdigest(),
    "end_to_end_seconds": end_to_end, "examples": len(instances),
    "output_tokens": sum(len(i.tokens) for i in instances),
    "random_next_fraction": float(np.mean([i.is_random_next for i in instances])),
}))
"""


def run_reference(reference_dir, corpus, vocab, dupe_factor):
    import tensorflow_datasets

    with tempfile.TemporaryDirectory() as scratch:
        pathlib.Path(scratch, "tensorflow.py").write_text(_TF_STANDIN)
        pathlib.Path(scratch, "run_reference.py").write_text(_REFERENCE_RUN)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([scratch, reference_dir]),
            TFDS_PROTO_DIR=str(pathlib.Path(tensorflow_datasets.__file__).parent / "proto"),
        )
        command = [sys.executable, os.path.join(scratch, "run_reference.py"), corpus, vocab]
        command += [os.path.join(scratch, "examples.rec"), str(dupe_factor)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"the reference failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cpu_seconds() -> float:
    """This process's CPU time plus that of its finished children (prepare's worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu_seconds() - self.cpu


def run_ours(corpus, vocab, dupe_factor, dynamic_epochs):
    from bert_jax.data import input_pipeline
    from bert_jax.data.tokenization import WordPieceTokenizer

    results = {}
    tokenizer = WordPieceTokenizer.from_vocab(vocab)
    with open(corpus, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    with Clock() as clock:
        ids, _ = tokenizer.encode_lines(lines)
    results["tokenize"] = {
        "seconds": [clock.wall, clock.cpu],
        "input_tokens": int(ids.size),
        "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
    }

    with tempfile.TemporaryDirectory() as data_dir:
        from bert_jax.pretraining.config import data_config_dict

        config = data_config_dict()
        config.update(
            input_files=corpus,
            vocab_file=vocab,
            data_dir=data_dir,
            validation_fraction=0.0,  # Every document, as the reference.
            dupe_factor=dupe_factor,
            dynamic_masking=False,
            show_progress=False,
        )
        with Clock() as clock:
            input_pipeline.prepare_data(config)
            stats = _drain(config, num_epochs=dupe_factor)
        results["end_to_end"] = {"seconds": [clock.wall, clock.cpu], **stats}

        for whole_word in (False, True):
            config.update(dynamic_masking=True, whole_word_masking=whole_word)
            with Clock() as clock:
                stats = _drain(config, num_epochs=dynamic_epochs)
            name = "dynamic_whole_word" if whole_word else "dynamic"
            results[name] = {"seconds": [clock.wall, clock.cpu], **stats}
    return results


def _drain(config, num_epochs, batch_size=256):
    from bert_jax.data import input_pipeline

    iterator = input_pipeline.make_pretraining_iterator(
        config, split="train", global_batch_size=batch_size, seed=0, num_epochs=num_epochs
    )
    examples = tokens = random_next = 0
    for batch in iterator:
        examples += len(batch["input_ids"])
        tokens += int(batch["attention_mask"].sum())
        random_next += int(batch["next_sentence_labels"].sum())
    return {
        "examples": examples,
        "output_tokens": tokens,
        "random_next_fraction": random_next / examples,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_dir", default="/tmp/google-research-bert")
    parser.add_argument("--corpus", default=str(SHARED / "corpora" / "kjv.txt"))
    parser.add_argument("--vocab", default=str(SHARED / "vocab" / "bert-base-uncased-vocab.txt"))
    parser.add_argument("--dupe_factor", type=int, default=5)
    parser.add_argument("--dynamic_epochs", type=int, default=5)
    parser.add_argument("--json", help="Also write the results to this file.")
    parser.add_argument(
        "--tables", default="side_by_side", help="Comma-separated: side_by_side,memory,workers."
    )
    parser.add_argument("--sizes_gb", default="0.4,1.6,3.2", help="Inputs of the memory table.")
    parser.add_argument("--workers_gb", type=float, default=0.4, help="Input of the workers table.")
    parser.add_argument("--repeats", type=int, default=2, help="Alternations in the workers table.")
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="For generated inputs.")
    args = parser.parse_args()
    for path in (args.corpus, args.vocab):
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found (pass --corpus / --vocab)")
    tables = set(args.tables.split(","))
    results = {}
    if "memory" in tables:
        sizes = [float(s) for s in args.sizes_gb.split(",")]
        results["memory"] = memory_table(sizes, args.vocab, args.scratch)
    if "workers" in tables:
        results["workers"] = workers_table(args.workers_gb, args.vocab, args.scratch, args.repeats)
    if "side_by_side" in tables:
        results["side_by_side"] = side_by_side(args)
    print(json.dumps(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


def side_by_side(args) -> dict:
    """bert_jax against google-research/bert on one corpus (the table at the top)."""
    ours = run_ours(args.corpus, args.vocab, args.dupe_factor, args.dynamic_epochs)
    reference = None
    if os.path.isfile(os.path.join(args.reference_dir, "create_pretraining_data.py")):
        reference = run_reference(args.reference_dir, args.corpus, args.vocab, args.dupe_factor)
    else:
        print(f"reference not found in {args.reference_dir}: measuring bert_jax only")

    rows = []

    def row(name, tokens, seconds, examples=None):
        wall, cpu = seconds
        rows.append((name, examples, tokens, wall, cpu, tokens / wall / 1e6, tokens / cpu / 1e6))

    if reference:
        row("reference tokenize", reference["input_tokens"], reference["tokenize_seconds"])
    row("bert_jax tokenize", ours["tokenize"]["input_tokens"], ours["tokenize"]["seconds"])
    if reference:
        row(
            "reference end to end",
            reference["output_tokens"],
            reference["end_to_end_seconds"],
            reference["examples"],
        )
    for name in ("end_to_end", "dynamic", "dynamic_whole_word"):
        result = ours[name]
        row(
            f"bert_jax {name.replace('_', ' ')}",
            result["output_tokens"],
            result["seconds"],
            result["examples"],
        )

    header = f"{'measurement':<30}{'examples':>9}{'tokens':>11}{'wall s':>8}{'CPU s':>8}"
    print(header + f"{'Mtok/s':>8}{'Mtok/CPU-s':>11}")
    for name, examples, tokens, wall, cpu, rate, per_cpu in rows:
        count = f"{examples:>9,}" if examples else f"{'':>9}"
        print(f"{name:<30}{count}{tokens:>11,}{wall:>8.2f}{cpu:>8.2f}{rate:>8.2f}{per_cpu:>11.2f}")

    summary = {"ours": ours, "reference": reference, "cpu_count": os.cpu_count()}
    if reference:
        ours_e2e, ref_e2e = ours["end_to_end"], reference
        speedup = [
            (ours_e2e["output_tokens"] / ours_e2e["seconds"][k])
            / (ref_e2e["output_tokens"] / ref_e2e["end_to_end_seconds"][k])
            for k in (0, 1)
        ]
        tokenize_speedup = [
            (ours["tokenize"]["input_tokens"] / ours["tokenize"]["seconds"][k])
            / (reference["input_tokens"] / reference["tokenize_seconds"][k])
            for k in (0, 1)
        ]
        summary.update(
            end_to_end_speedup_wall=speedup[0],
            end_to_end_speedup_cpu=speedup[1],
            tokenize_speedup_wall=tokenize_speedup[0],
            identical_token_ids=ours["tokenize"]["ids_sha256"] == reference["ids_sha256"],
            mean_tokens_per_example={
                "reference": ref_e2e["output_tokens"] / ref_e2e["examples"],
                "bert_jax": ours_e2e["output_tokens"] / ours_e2e["examples"],
            },
        )
        means = summary["mean_tokens_per_example"]
        print(f"\nend to end: {speedup[0]:.1f}x the reference (wall), {speedup[1]:.1f}x (CPU time)")
        print(f"tokenization: {tokenize_speedup[0]:.1f}x (wall); ", end="")
        print(f"token ids identical to the reference: {summary['identical_token_ids']}")
        print(f"mean tokens per example: reference {means['reference']:.2f}, ", end="")
        print(f"bert_jax {means['bert_jax']:.2f}")
    return summary


# -- preparing large corpora ---------------------------------------------------------------------


def make_input(path: pathlib.Path, target_bytes: int) -> int:
    """kjv.txt and brown.txt repeated (a blank line between copies) up to target_bytes."""
    sources = [(SHARED / "corpora" / name).read_bytes() for name in ("kjv.txt", "brown.txt")]
    written = 0
    with open(path, "wb") as f:
        while written < target_bytes:
            for text in sources:
                f.write(text.rstrip(b"\n") + b"\n\n")
                written += len(text.rstrip(b"\n")) + 2
    return written


_MEASURE = """
import json, resource, subprocess, sys, time
wall, start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"returncode": done.returncode, "stderr": done.stderr[-2000:],
    "wall": time.perf_counter() - wall, "largest_rss": usage.ru_maxrss * 1024,
    "cpu": usage.ru_utime + usage.ru_stime - start.ru_utime - start.ru_stime}))
"""


def run_prepare(corpus: pathlib.Path, vocab: str, scratch: pathlib.Path, workers: int = 0) -> dict:
    """`python -m bert_jax.data.prepare` in a fresh process tree; the dataset is deleted after."""
    data_dir = scratch / "prepared"
    command = [sys.executable, "-m", "bert_jax.data.prepare", f"--input_files={corpus}"]
    command += [f"--vocab_file={vocab}", f"--data_dir={data_dir}", f"--num_workers={workers}"]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, env=env
    )
    try:
        result = json.loads(measured.stdout.strip().splitlines()[-1])
        if result["returncode"]:
            sys.exit(f"prepare failed:\n{result['stderr']}")
        (meta,) = data_dir.glob("pretraining_corpus/*/*/corpus.json")
        report = json.loads(meta.read_text())["report"]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "input_bytes": report["bytes"],
        "tokens": report["tokens"],
        "workers": report["workers"],
        "peak_rss_all": report["peak_rss_bytes"],
        "largest_rss": result["largest_rss"],
        "wall": result["wall"],
        "cpu": result["cpu"],
        "prepare_seconds": report["seconds"],
    }


def memory_table(sizes_gb: list[float], vocab: str, scratch: str) -> list[dict]:
    rows = []
    root = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_memory_", dir=scratch))
    try:
        for size in sizes_gb:
            corpus = root / f"corpus_{size}gb.txt"
            make_input(corpus, int(size * 1e9))
            try:
                rows.append({"size_gb": size, **run_prepare(corpus, vocab, root)})
            finally:
                corpus.unlink()
            print(f"memory: {size} GB done ({rows[-1]['wall']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'input':>8}{'tokens':>15}{'peak RSS all':>14}{'largest':>10}{'wall s':>9}", end="")
    print(f"{'CPU s':>9}{'MB/s':>7}{'workers':>9}")
    for r in rows:
        print(
            f"{r['size_gb']:>6} GB{r['tokens']:>15,}{r['peak_rss_all'] / 1e9:>11.2f} GB"
            f"{r['largest_rss'] / 1e9:>7.2f} GB{r['wall']:>9.0f}{r['cpu']:>9.0f}"
            f"{r['input_bytes'] / 1e6 / r['prepare_seconds']:>7.1f}{r['workers']:>9}"
        )
    growth = rows[-1]["peak_rss_all"] / rows[0]["peak_rss_all"]
    worst = max(r["peak_rss_all"] for r in rows) / 1e9
    print(f"peak RSS: at most {worst:.2f} GB (target <= 1.5), largest/smallest input {growth:.2f}x")
    print("(target <= 1.2x)")
    return rows


def workers_table(size_gb: float, vocab: str, scratch: str, repeats: int) -> dict:
    counts = list(range(1, (os.cpu_count() or 1) + 1))
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    root = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_workers_", dir=scratch))
    try:
        corpus = root / "corpus.txt"
        make_input(corpus, int(size_gb * 1e9))
        for repeat in range(repeats):  # A/B alternation: load changes hit every count alike
            for n in counts if repeat % 2 == 0 else counts[::-1]:
                runs[n].append(run_prepare(corpus, vocab, root, workers=n))
                print(f"workers: {n} done ({runs[n][-1]['wall']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def median(values):
        return float(np.median(values))

    base = median([r["tokens"] / r["wall"] for r in runs[1]])
    base_cpu = median([r["cpu"] for r in runs[1]])
    print(f"\n{size_gb} GB input, {repeats} runs per row (median)")
    print(f"{'workers':>8}{'tokens/s':>14}{'speed-up':>10}{'wall s':>9}{'CPU s':>9}", end="")
    print(f"{'CPU-bound speed-up':>20}")
    table = {}
    for n in counts:
        rate = median([r["tokens"] / r["wall"] for r in runs[n]])
        wall, cpu = median([r["wall"] for r in runs[n]]), median([r["cpu"] for r in runs[n]])
        # What n workers would reach with a core each, from the CPU they spent (load-proof).
        bound = n * base_cpu / cpu
        table[n] = {
            "tokens_per_s": rate,
            "speedup": rate / base,
            "cpu_bound": bound,
            "runs": runs[n],
        }
        print(f"{n:>8}{rate:>14,.0f}{rate / base:>9.2f}x{wall:>9.1f}{cpu:>9.1f}{bound:>19.2f}x")
    print("target on 2 cores: 2 workers >= 1.7x one worker (wall clock; needs an idle machine)")
    return table


if __name__ == "__main__":
    main()
