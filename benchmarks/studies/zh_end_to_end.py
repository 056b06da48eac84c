r"""Chinese end to end on ../shared/data/zh: does pretraining a small Chinese BERT pay off?

  nice -n 5 python -m benchmarks.studies.zh_end_to_end --workdir runs/zh_e2e \
      [--variants=random,char,wwm] [--seeds=0,1] [--sections=pretrain,finetune,crf,trainer]

1. Data: --ner_train_sentences seeded random sentences of zh/ner/train.conll (8,000) and
   --sentiment_train_examples reviews of zh/sentiment/train.tsv (6,000, stratified), written to
   WORKDIR/data; dev is always the whole dev file. A vocabulary of --vocab_size (8,000) is
   learned from zh/corpus/pretrain.txt (WORKDIR/vocab.txt).
2. pretrain: configs/zh_small.py on zh/corpus/pretrain.txt, its two phases (sequence 32, then
   128 from phase 1's parameters; --pretrain_steps / --pretrain_phase2_steps shorten them), once
   per pretrained variant:
   (b) `char`, character masking (every CJK character is its own token, so plain MLM masks
   characters); (c) `wwm`, whole-word masking over jieba words (HFL's Chinese-BERT-wwm
   semantics) over the word starts `data.word_segmenter=jieba` stored in the prepared dataset
   (both variants read the same dataset; only the masking differs). CPU seconds and wall time
   of each pretraining run are recorded (the 15-minute budget is ~1,800 CPU-seconds of this
   2-core machine).
3. finetune: NER (configs/finetune/token_classification.py) and sentiment
   (configs/finetune/classification.py) from (a) `random`: the same architecture and vocabulary,
   randomly initialised, and from each pretrained variant, for every fine-tuning seed; the
   hyperparameters are the --ner_* / --sentiment_* flags (defaults: the recipe README.zh-CN.md
   teaches; NER with a CRF layer, config `crf`, unless --no-ner_crf, a classifier over each
   character and its neighbours, `head_window` (--ner_head_window), and FGM adversarial
   training, `adversarial_epsilon` (--ner_adversarial_epsilon).
4. crf: the character CRF (benchmarks/studies/zh_crf.py) on the same NER training rows.
5. trainer: the `char` model exported with `python -m bert_jax.export` and fine-tuned by the
   transformers Trainer (PyTorch) with the same inputs (bert_jax's featurisation), optimizer,
   schedule, epoch order and initial head, first seed only (--trainer_seeds: more). Against
   bert_jax unpacked (one sentence per row) only the dropout masks differ: without dropout the
   two take the same steps, loss and gradient norm equal at every step
   (tests/integration/test_trainer_parity.py); bert_jax's own run packs its rows, as users run
   it. Its NER is compared with bert_jax's NER with a plain linear head (the Trainer's
   BertForTokenClassification has no CRF, window or FGM), run for that purpose. --dropout_seeds
   reruns the reference runs of the first Trainer seed with other dropout masks alone (config
   `dropout_seed`: same head, same batches), to show how far that chance moves one seed's score.

Masking variants (docs/chinese.md#masking-variants): --variants takes any name of MASKINGS
(e.g. `wwm_span`, `mixed`, `schedule`, `macbert`) or one defined by --masking
NAME=KEY:VALUE;KEY:VALUE (data.* keys); each is pretrained (--pretrain_phases, default both
phases), fine-tuned with every seed, and its row (mean ± sd) appended to WORKDIR/masking.md:

  nice -n 5 python -m benchmarks.studies.zh_end_to_end --workdir runs/zh_e2e \
      --variants=wwm_span --seeds=0,1,2 --sections=pretrain,finetune

Runs already finished in WORKDIR with the same settings are reused (others run again). Prints a
Markdown table (entity F1 per type and overall, sentiment accuracy; mean and sample standard
deviation over seeds) and writes WORKDIR/results.json. Wall times are those of a machine that
may be shared; CPU seconds are the comparable figure.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED_ZH = REPO.parent / "shared" / "data" / "zh"
SPANS = "0.4,0.3,0.2,0.1"  # MacBERT's n-gram lengths 1-4
PHASE1_STEPS = "phase1_steps"  # a variant's phase-1 length (0: the config's / --pretrain_steps)
# Masking variants: data.* keys on top of the pretraining config, both phases (the rate
# schedule: phase 1 only, phase 2 at masked_lm_prob; 6 epochs are about half of phase 1: the
# 15,200 training documents give some 54,000 examples at sequence 32, phase 1 takes 640,000).
MASKINGS = {
    "char": {},
    "wwm": {"whole_word_masking": True},
    "span": {"span_length_weights": SPANS},
    "wwm_span": {"whole_word_masking": True, "span_length_weights": SPANS},
    "mixed": {"whole_word_masking": True, "word_char_mask_prob": 0.5},
    "wwm_cap2": {"whole_word_masking": True, "max_masked_word_length": 2},
    "schedule": {"masked_lm_prob_start": 0.3, "masked_lm_prob_schedule_epochs": 6.0},
    "similar": {"similar_token_prob": 1.0},
    "macbert": {"whole_word_masking": True, "span_length_weights": SPANS,
                "similar_token_prob": 1.0},
    # Character masking with phase 1 lengthened to fill the 15-minute budget (~1,800 CPU-s; the
    # recipe's 10,000 + 1,500 steps take ~1,320): `phase1_steps` is the one key not in data.*.
    "long": {PHASE1_STEPS: 14_000},
    # Character masking without next-sentence prediction (RoBERTa's, ModernBERT's): rows of one
    # contiguous chunk, 30 characters at sequence 32 where a pair row splits 29 between two.
    "nonsp": {"next_sentence_prediction": False},
}  # fmt: skip
LABELS = {"random": "(a) random init", "char": "(b) character masking",
          "wwm": "(c) whole-word masking (jieba)"}  # fmt: skip
TASKS = ("ner", "sentiment")
METRICS = {"ner": "f1", "sentiment": "accuracy"}  # each task's score in the report


# --- data --------------------------------------------------------------------------------------


TORCH_INPUTS = ("input_ids", "token_type_ids", "attention_mask")  # BertModel.forward's


def prepare_inputs(args, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    from benchmarks.finetune_vs_hf import subsample_tsv
    from benchmarks.studies.zh_crf import subsample_conll
    from bert_jax.data.tokenization import WordPieceTokenizer

    data, shared = workdir / "data", pathlib.Path(args.shared)
    files = {
        "ner_train": data / "ner_train.conll",
        "ner_dev": data / "ner_dev.conll",
        "sentiment_train": data / "sentiment_train.tsv",
        "sentiment_dev": data / "sentiment_dev.tsv",
        "corpus": pathlib.Path(args.corpus or shared / "corpus" / "pretrain.txt"),
        "vocab": workdir / "vocab.txt",
    }
    counts = {"train": (args.ner_train_sentences, args.sentiment_train_examples),
              "dev": (args.dev_examples, args.dev_examples)}  # fmt: skip
    for split, (ner_count, sentiment_count) in counts.items():
        seed = args.data_seed + (split == "dev")
        if not files[f"ner_{split}"].exists():
            source = shared / "ner" / f"{split}.conll"
            subsample_conll(source, files[f"ner_{split}"], ner_count, seed)
        if not files[f"sentiment_{split}"].exists():
            source = shared / "sentiment" / f"{split}.tsv"
            subsample_tsv(source, files[f"sentiment_{split}"], sentiment_count, seed)
    if not files["vocab"].exists():
        tokenizer = WordPieceTokenizer.train([files["corpus"]], args.vocab_size)
        tokenizer.save_vocab(files["vocab"])
    return files


# --- pretraining -------------------------------------------------------------------------------


PHASES = ("phase1", "phase2")  # the config's modes, google-research/bert's two lengths


def pretraining_config(args, files, workdir: pathlib.Path, variant: str, phase: str = "phase1"):
    """The pretraining config of one phase (--pretrain_mode, e.g. test, replaces both)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zh_config", REPO / args.pretrain_config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(args.pretrain_mode or phase)
    config.data.input_files = str(files["corpus"])
    config.data.vocab_file = str(files["vocab"])
    config.data.data_dir = str(workdir / "pretraining_data")
    config.model.vocab_size = max(config.model.vocab_size, args.vocab_size)
    config.progress_bar = False
    overrides = dict(masking_overrides(args, variant))
    variant_steps = overrides.pop(PHASE1_STEPS, 0) if phase == "phase1" else 0
    overrides.pop(PHASE1_STEPS, None)  # not a data key
    steps = args.pretrain_steps if phase == "phase1" else args.pretrain_phase2_steps
    if variant_steps:  # the recipe made longer: its evaluations and checkpoints as they are
        config.num_train_steps = variant_steps
    elif steps:
        config.num_train_steps = steps
        config.warmup_steps = min(config.warmup_steps, steps // 10)
        config.eval_every_steps = config.checkpoint_every_steps = steps
    config.data.word_segmenter = "jieba"
    for key, value in overrides.items():
        if phase == "phase1" or not key.startswith("masked_lm_prob_"):
            config.data[key] = value
    rate = max(config.data.masked_lm_prob, config.data.masked_lm_prob_start)
    needed = min(max(1, round(config.data.max_seq_length * rate)), config.data.max_seq_length - 3)
    config.data.max_predictions_per_seq = max(config.data.max_predictions_per_seq, needed)
    return config


def maskings(args) -> dict[str, dict]:
    """MASKINGS and the variants --masking defines (NAME=KEY:VALUE;KEY:VALUE, data.* keys)."""
    from bert_jax.pretraining.config import data_config_dict

    defaults, table = data_config_dict(), dict(MASKINGS)
    for definition in args.masking:
        name, _, body = definition.partition("=")
        overrides = {}
        for item in filter(None, body.split(";")):
            key, _, value = item.partition(":")
            if key not in defaults and key != PHASE1_STEPS:
                raise SystemExit(f"--masking {definition}: data.{key} is not a config key")
            kind = int if key == PHASE1_STEPS else type(defaults[key])
            overrides[key] = value.lower() == "true" if kind is bool else kind(value)
        table[name.strip()] = overrides
    return table


def masking_overrides(args, variant: str) -> dict:
    table = maskings(args)
    if variant not in table:
        raise SystemExit(
            f"unknown variant {variant!r}: use random, {', '.join(table)} or --masking"
        )
    return table[variant]


def pretrain(args, files, workdir: pathlib.Path, variant: str, results: dict) -> pathlib.Path:
    """Both phases of one variant; the second starts from the first's parameters. Returns the
    phase-2 workdir (WORKDIR/pretrain_VARIANT; phase 1 is WORKDIR/pretrain_VARIANT_phase1)."""
    from bert_jax.pretraining import train as train_lib

    phases = args.pretrain_phases.split(",")
    targets = {"phase1": workdir / f"pretrain_{variant}_phase1",
               "phase2": workdir / f"pretrain_{variant}"}  # fmt: skip
    configs = {phase: pretraining_config(args, files, workdir, variant, phase) for phase in phases}
    if "phase2" in configs:
        configs["phase2"].init_checkpoint = str(targets["phase1"])
    steps = [int(configs[phase].num_train_steps) for phase in phases]
    masking = masking_overrides(args, variant)
    row = results["pretrain"].get(variant, {})
    last = targets[phases[-1]]
    # A row from before the masking variants: char or wwm, as MASKINGS has them.
    same = row.get("steps") == steps and row.get("masking", MASKINGS.get(variant)) == masking
    if same and (last / "checkpoints").exists():
        return last
    finished_otherwise = row.get("steps") is not None and not same  # other steps or masking
    row = {"steps": steps, "masking": masking, "cpu_seconds": 0.0, "wall_seconds": 0.0}
    for phase in phases:
        config, target = configs[phase], targets[phase]
        config.overwrite = finished_otherwise  # start over; else resume a preempted run
        print(f"== pretraining {variant} {phase}: {config.num_train_steps} steps at "
              f"{config.data.max_seq_length} into {target}", flush=True)  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        state = train_lib.train_and_evaluate(config, target)
        if int(state.step) < config.num_train_steps:  # preempted (SIGTERM): checkpoints resume
            raise SystemExit(f"pretraining {variant} stopped at step {int(state.step)}; rerun")
        row["cpu_seconds"] += time.process_time() - cpu
        row["wall_seconds"] += time.perf_counter() - wall
        evals = [json.loads(line) for line in open(target / "metrics.jsonl") if '"eval_' in line]
        row[f"{phase}_eval_mlm_accuracy"] = evals[-1].get("eval_mlm_accuracy") if evals else None
    row["eval_mlm_accuracy"] = row[f"{phases[-1]}_eval_mlm_accuracy"]
    model = configs[phases[-1]].model
    row["model"] = {k: model[k] for k in ("num_hidden_layers", "hidden_size", "vocab_size")}
    results["pretrain"][variant] = row
    return last


# --- fine-tuning ------------------------------------------------------------------------------


def finetune_config(args, files, task: str, init: pathlib.Path, seed: int, random_init: bool):
    sys.path.insert(0, str(REPO))
    from configs.finetune import classification, token_classification

    module = token_classification if task == "ner" else classification
    config = module.get_config()
    config.init_checkpoint = str(init)
    config.random_init = random_init
    config.task.train_file = str(files[f"{task}_train"])
    config.task.dev_file = str(files[f"{task}_dev"])
    config.learning_rate = getattr(args, f"{task}_learning_rate")
    config.num_train_epochs = getattr(args, f"{task}_epochs")
    config.batch_size = args.batch_size
    config.max_seq_length = args.max_seq_length
    config.seed = seed
    config.crf = _uses_crf(args, task)
    config.adversarial_epsilon = _adversarial_epsilon(args, task)
    config.head_window = _head_window(args, task)
    config.eval_every_steps = 0
    config.progress_bar = False
    config.mesh.data = 1
    return config


def _uses_crf(args, task: str) -> bool:
    return task == "ner" and args.ner_crf


def _adversarial_epsilon(args, task: str) -> float:
    return float(args.ner_adversarial_epsilon) if task == "ner" else 0.0


def _head_window(args, task: str) -> int:
    return int(args.ner_head_window) if task == "ner" else 0


def run_name(args, task: str, variant: str, seed: int) -> str:
    crf = "_crf" if _uses_crf(args, task) else ""
    window = f"_window{_head_window(args, task)}" if _head_window(args, task) else ""
    fgm = "_fgm" if _adversarial_epsilon(args, task) > 0 else ""
    return f"{task}{crf}{window}{fgm}_{variant}_seed{seed}"


def _same_config(path: pathlib.Path, config) -> bool:
    """Whether a finished run was made with this config (else it is run again). A key the saved
    config lacks counts as the same when this config has it at its default (a setting added to
    bert_jax later, whose default is the old behaviour)."""
    from bert_jax.finetuning.config import finetuning_config

    if not path.exists():
        return False
    saved, wanted = json.loads(path.read_text()), json.loads(config.to_json())
    defaults = json.loads(finetuning_config(config.task.kind).to_json())
    added = {k for k in wanted.keys() - saved.keys() if k in defaults and wanted[k] == defaults[k]}
    return saved == {k: v for k, v in wanted.items() if k not in added}


def finetune(args, files, task, init, seed, random_init, target: pathlib.Path, **overrides):
    """One fine-tuning run (config keys in `overrides` on top of finetune_config's) -> its dev
    metrics with CPU and wall seconds; reused from `target` if it ran with this config."""
    from bert_jax.finetuning import train as finetune_lib

    config = finetune_config(args, files, task, init, seed, random_init)
    config.update(overrides)
    if (target / "run.json").exists() and _same_config(target / "config.json", config):
        return json.loads((target / "run.json").read_text())
    shutil.rmtree(target, ignore_errors=True)
    print(f"== fine-tuning {target.name}", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    result = finetune_lib.train_and_evaluate(config, target)
    row = dict(result.eval_metrics, cpu_seconds=time.process_time() - cpu,
               wall_seconds=time.perf_counter() - wall)  # fmt: skip
    (target / "run.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def trainer_rows(data) -> list[dict]:
    """A TaskData's features as the Trainer's dataset: torch tensors, ignored labels -100."""
    import torch

    labels = np.where(data.arrays["labels"] < 0, -100, data.arrays["labels"])
    return [
        {k: torch.tensor(data.arrays[k][i], dtype=torch.long) for k in TORCH_INPUTS}
        | {"labels": torch.tensor(labels[i], dtype=torch.long)}
        for i in range(data.num_features)
    ]


def matched_trainer(config, hf_dir: pathlib.Path, train, target: pathlib.Path, dropout=0.1):
    """A transformers Trainer that takes the steps bert_jax's unpacked run of `config` takes:
    the model in hf_dir (BertForTokenClassification or BertForSequenceClassification, by
    config.task.kind) with bert_jax's initial head for config.seed, bert_jax's optimizer and
    schedule (hf_training_arguments) and its batches in its order (ordered_trainer_class) over
    `train` (bert_jax's features); `dropout` (hidden and attention) is the only other setting.
    Returns (trainer, steps)."""
    from transformers import BertForSequenceClassification, BertForTokenClassification

    from benchmarks.finetune_vs_hf import (
        hf_training_arguments,
        ordered_trainer_class,
        start_from_bert_jax_head,
    )
    from bert_jax.checkpoints import pretrained

    kind = config.task.kind
    model_class = (
        BertForTokenClassification if kind == "token_classification"
        else BertForSequenceClassification
    )  # fmt: skip
    model = model_class.from_pretrained(
        str(hf_dir), num_labels=train.num_labels, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    bert_config = pretrained.inspect_checkpoint(config.init_checkpoint).bert_config
    start_from_bert_jax_head(model, train.num_labels, config.seed, bert_config, kind)
    settings = trainer_settings(config)
    steps = math.ceil(math.ceil(train.num_features / config.batch_size) * settings.epochs)
    arguments = hf_training_arguments(settings, target, steps)
    trainer = ordered_trainer_class(config.seed)(
        model=model, args=arguments, train_dataset=trainer_rows(train)
    )
    return trainer, steps


def trainer_settings(config) -> argparse.Namespace:
    """The fine-tuning settings hf_training_arguments reads, from a bert_jax config."""
    return argparse.Namespace(
        batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rate, epochs=config.num_train_epochs,
        warmup_proportion=config.warmup_proportion, seed=config.seed,
    )  # fmt: skip


def trainer_finetune(args, files, task, init: pathlib.Path, seed: int, target) -> dict:
    """The transformers Trainer on the exported weights, fed bert_jax's own features."""
    import torch

    from bert_jax.checkpoints import pretrained
    from bert_jax.finetuning.tasks import features as tasks

    config = finetune_config(args, files, task, init, seed, random_init=False)
    settings = trainer_settings(config)
    if (target / "run.json").exists():
        row = json.loads((target / "run.json").read_text())
        if row.get("settings") == vars(settings):
            return row
    hf_dir = target.parent / f"{init.name}_hf"
    if not (hf_dir / "config.json").exists():
        command = [sys.executable, "-m", "bert_jax.export", str(init.absolute()), "--out",
                   str(hf_dir.absolute())]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO)
    tokenizer = pretrained.load_tokenizer(pretrained.inspect_checkpoint(init))
    train = tasks.load_task(config, "train", tokenizer)
    dev = tasks.load_task(config, "dev", tokenizer, label_list=train.label_list)
    torch.set_num_threads(args.torch_threads)
    trainer, steps = matched_trainer(config, hf_dir, train, target)
    print(f"== transformers Trainer {target.name}", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    logits = trainer.predict(trainer_rows(dev)).predictions
    row = dict(tasks.compute_metrics(config.task.kind, logits, dev),
               cpu_seconds=time.process_time() - cpu, wall_seconds=time.perf_counter() - wall,
               steps=steps, settings=vars(settings))  # fmt: skip
    target.mkdir(parents=True, exist_ok=True)
    (target / "run.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


# --- report -----------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def markdown(results: dict) -> str:
    types = ("PER", "LOC", "ORG")
    lines = [
        "| model | NER F1 | " + " | ".join(f"F1 {t}" for t in types) + " | sentiment acc | "
        "pretraining CPU-s (wall s) | held-out MLM acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {**LABELS, **{v: f"masking {v}" for v in results["finetune"] if v not in LABELS}}
    for variant, label in names.items():
        runs = results["finetune"].get(variant)
        if not runs:
            continue
        ner, sentiment = runs.get("ner", {}), runs.get("sentiment", {})
        pre = results["pretrain"].get(variant)
        cost = f"{pre['cpu_seconds']:.0f} ({pre['wall_seconds']:.0f})" if pre else "-"
        mlm = pre.get("eval_mlm_accuracy") if pre else None
        cells = [_mean_sd([r["f1"] for r in ner.values()])]
        cells += [_mean_sd([r.get(f"f1_{t}", 0.0) for r in ner.values()]) for t in types]
        cells += [_mean_sd([r["accuracy"] for r in sentiment.values()]), cost]
        cells.append(f"{100 * mlm:.1f}" if mlm is not None else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    crf = results.get("crf")
    if crf:
        scores = crf["scores"]
        cells = [f"{100 * scores['overall']['f1']:.1f}"]
        cells += [f"{100 * scores.get(t, {'f1': 0.0})['f1']:.1f}" for t in types]
        lines.append("| character CRF (same NER rows) | " + " | ".join(cells) + " | - | - | - |")
    for variant, runs in results.get("trainer", {}).items():
        ner = runs.get("ner", {})
        sentiment = runs.get("sentiment", {})
        cells = [_mean_sd([r["f1"] for r in ner.values()])]
        cells += [_mean_sd([r.get(f"f1_{t}", 0.0) for r in ner.values()]) for t in types]
        cells += [_mean_sd([r["accuracy"] for r in sentiment.values()]), "-", "-"]
        plain = ", NER: linear head" if results.get("settings", {}).get("ner_crf") else ""
        label = f"transformers Trainer on exported ({variant}{plain})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for variant, runs in results.get("trainer", {}).items():
        for task, metric in METRICS.items():
            differences = []
            for seed, row in runs.get(task, {}).items():
                ours = results.get("trainer_reference") or results["finetune"]
                ours = ours.get(variant, {}).get(task, {}).get(seed)
                if ours:
                    differences.append(100 * (ours[metric] - row[metric]))
                    lines.append(
                        f"\n{task} {metric}, {variant}, seed {seed}: bert_jax (same head) "
                        f"{100 * ours[metric]:.2f}, Trainer {100 * row[metric]:.2f}, "
                        f"difference {differences[-1]:+.2f} points"
                    )
            if len(differences) > 1:
                lines.append(
                    f"\n{task} {metric}, {variant}: mean difference over {len(differences)} "
                    f"seeds {statistics.mean(differences):+.2f} points"
                )
    lines += dropout_only_lines(results)
    return "\n".join(lines)


def dropout_only_lines(results: dict) -> list[str]:
    """The Trainer's reference runs (first seed) beside their reruns with other dropout masks
    alone (same head and batches): how far dropout's chance moves one seed's score."""
    lines = []
    for variant, by_task in results.get("dropout_only", {}).items():
        for task, runs in by_task.items():
            metric = METRICS[task]
            reference = results.get("trainer_reference", {}).get(variant, {}).get(task, {})
            if not runs or not reference:
                continue
            seed, own = next(iter(reference.items()))
            values = [own[metric], *(row[metric] for row in runs.values())]
            masks = ", ".join(
                f"{100 * row[metric]:.2f} (dropout_seed {d})" for d, row in runs.items()
            )
            lines.append(
                f"\n{task} {metric}, {variant}, seed {seed}, bert_jax (same head) with other "
                f"dropout masks alone: {100 * own[metric]:.2f} (its own), {masks}; "
                f"{_mean_sd(values)}, range {100 * (max(values) - min(values)):.2f} points"
            )
    return lines


def append_masking_rows(results: dict, args, path: pathlib.Path) -> None:
    """One row per pretrained variant of this run (mean ± sd over its seeds) appended to `path`."""
    if not path.exists():
        path.write_text(
            "| variant | data keys | pretraining steps | seeds | NER F1 | sentiment acc "
            "| held-out MLM acc | date |\n|---|---|---|---|---|---|---|---|\n"
        )
    with path.open("a") as f:
        for variant, runs in results["finetune"].items():
            pre = results["pretrain"].get(variant)
            if variant == "random" or not pre:
                continue
            keys = ", ".join(f"{k}={v}" for k, v in pre.get("masking", {}).items()) or "-"
            seeds = ",".join(dict.fromkeys([*runs.get("ner", {}), *runs.get("sentiment", {})]))
            ner = _mean_sd([r["f1"] for r in runs.get("ner", {}).values()])
            sentiment = _mean_sd([r["accuracy"] for r in runs.get("sentiment", {}).values()])
            mlm = pre.get("eval_mlm_accuracy")
            mlm = f"{100 * mlm:.1f}" if mlm is not None else "-"
            steps = "+".join(map(str, pre["steps"]))
            f.write(f"| {variant} | {keys} | {steps} | {seeds} | {ner} | {sentiment} | {mlm} | "
                    f"{time.strftime('%Y-%m-%d')} |\n")  # fmt: skip


def fresh_results(previous: dict, args) -> dict:
    """This run's results, starting from WORKDIR/results.json: pretraining and CRF rows are kept
    (pretraining is reused from them); fine-tuning rows are collected afresh (finished runs with
    the same settings are reused from their directories), so no row of a seed or recipe not asked
    for now enters the table."""
    kept = {key: previous[key] for key in ("pretrain", "crf") if key in previous}
    return {"pretrain": {}, **kept, "finetune": {}, "trainer": {}, "trainer_reference": {},
            "dropout_only": {}, "settings": vars(args)}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/zh_e2e")
    parser.add_argument("--shared", default=str(SHARED_ZH), help="the zh/ data folder")
    parser.add_argument("--sections", default="pretrain,finetune,crf,trainer")
    parser.add_argument("--variants", default="random,char,wwm", help="random and MASKINGS")
    parser.add_argument("--masking", action="append", default=[],
                        help="NAME=KEY:VALUE;KEY:VALUE: a masking variant")  # fmt: skip
    parser.add_argument("--pretrain_phases", default="phase1,phase2", help="or phase1")
    parser.add_argument("--seeds", default="0,1", help="fine-tuning seeds")
    parser.add_argument("--tasks", default=",".join(TASKS), help="fine-tuning tasks")
    parser.add_argument("--trainer_seeds", default="", help="the Trainer's; default: the first")
    parser.add_argument(
        "--dropout_seeds",
        default="",
        help="the Trainer's reference runs again (first Trainer seed) with these "
        "dropout_seed: dropout masks alone",
    )
    parser.add_argument("--data_seed", type=int, default=0, help="which training rows")
    parser.add_argument("--ner_train_sentences", type=int, default=8000, help="0 = all")
    parser.add_argument("--sentiment_train_examples", type=int, default=6000, help="0 = all")
    parser.add_argument("--dev_examples", type=int, default=0, help="0 = the whole dev files")
    parser.add_argument("--corpus", default="", help="pretraining text (default zh/corpus)")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--pretrain_config", default="configs/zh_small.py")
    parser.add_argument("--pretrain_mode", default="", help="get_config argument, e.g. test")
    parser.add_argument("--pretrain_steps", type=int, default=0, help="phase 1; 0: the config's")
    parser.add_argument("--pretrain_phase2_steps", type=int, default=0, help="0: the config's")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--ner_learning_rate", type=float, default=3e-3)
    parser.add_argument("--ner_epochs", type=float, default=30.0)
    parser.add_argument("--ner_crf", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--ner_head_window", type=int, default=1, help="neighbours; 0: off")
    parser.add_argument("--ner_adversarial_epsilon", type=float, default=2.0, help="FGM; 0: off")
    parser.add_argument("--sentiment_learning_rate", type=float, default=3e-4)
    parser.add_argument("--sentiment_epochs", type=float, default=5.0)
    parser.add_argument("--torch_threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not pathlib.Path(args.shared).is_dir():
        print(f"{args.shared} not found: this benchmark needs the shared Chinese data",
              file=sys.stderr)  # fmt: skip
        return 2
    sys.path.insert(0, str(REPO))
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results_file = workdir / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.exists() else {}
    results = fresh_results(previous, args)
    sections = args.sections.split(",")
    variants = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    if set(args.tasks.split(",")) - set(TASKS):
        parser.error(f"--tasks {args.tasks}: choose from {', '.join(TASKS)}")
    files = prepare_inputs(args, workdir)

    def save():
        results_file.write_text(json.dumps(results, indent=2) + "\n")

    inits = {}
    for name in set(variants) - {"random"}:
        masking_overrides(args, name)  # an unknown name stops here, before any run
    for variant in [v for v in dict.fromkeys(["char", *variants]) if v != "random"]:
        if "pretrain" not in sections and not (workdir / f"pretrain_{variant}").exists():
            continue
        inits[variant] = pretrain(args, files, workdir, variant, results)
        save()
    if "finetune" in sections:
        for variant in variants:
            init = inits.get("char" if variant == "random" else variant)
            if init is None:
                continue
            for task in args.tasks.split(","):
                for seed in seeds:
                    target = workdir / run_name(args, task, variant, seed)
                    row = finetune(args, files, task, init, seed, variant == "random", target)
                    results["finetune"].setdefault(variant, {}).setdefault(task, {})[str(seed)] = (
                        row
                    )
                    save()
    if "crf" in sections:
        from benchmarks.studies.zh_crf import run_crf

        if "crf" not in results:
            print("== character CRF", flush=True)
            results["crf"] = run_crf(files["ner_train"], files["ner_dev"], workdir / "crf")
            save()
    if "trainer" in sections and "char" in inits:
        # The Trainer's recipe: BertForTokenClassification has no CRF, window or FGM
        plain = argparse.Namespace(
            **{**vars(args), "ner_crf": False, "ner_head_window": 0, "ner_adversarial_epsilon": 0}
        )
        trainer_seeds = (
            [int(s) for s in args.trainer_seeds.split(",")] if args.trainer_seeds else seeds[:1]
        )
        for task in TASKS:
            for seed in trainer_seeds:
                target = workdir / f"trainer_{task}_char_seed{seed}"
                row = trainer_finetune(plain, files, task, inits["char"], seed, target)
                results["trainer"].setdefault("char", {}).setdefault(task, {})[str(seed)] = row
                target = workdir / run_name(plain, task, "char", seed)
                row = finetune(plain, files, task, inits["char"], seed, False, target)
                reference = results["trainer_reference"].setdefault("char", {})
                reference.setdefault(task, {})[str(seed)] = row
                save()
        dropout_seeds = [int(s) for s in args.dropout_seeds.split(",") if s]
        for task in TASKS:
            for dropout_seed in dropout_seeds:
                seed = trainer_seeds[0]
                name = f"{run_name(plain, task, 'char', seed)}_dropout{dropout_seed}"
                row = finetune(plain, files, task, inits["char"], seed, False, workdir / name,
                               dropout_seed=dropout_seed)  # fmt: skip
                runs = results["dropout_only"].setdefault("char", {}).setdefault(task, {})
                runs[str(dropout_seed)] = row
                save()
    if "finetune" in sections:
        append_masking_rows(results, args, workdir / "masking.md")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
