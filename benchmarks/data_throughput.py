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
import subprocess
import sys
import tempfile
import time

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


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_ours(corpus, vocab, dupe_factor, dynamic_epochs):
    from bert_jax.data import pipeline
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
        config = pipeline.default_data_config()
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
            pipeline.prepare_data(config)
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
    from bert_jax.data import pipeline

    iterator = pipeline.make_pretraining_iterator(
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
    args = parser.parse_args()
    for path in (args.corpus, args.vocab):
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found (pass --corpus / --vocab)")

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
    print(json.dumps(summary))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
