"""bert_jax fine-tuning takes the transformers Trainer's steps (the Chinese study's check).

benchmarks/studies/zh_end_to_end.py compares bert_jax with the Trainer on exported weights and says
the two runs differ only in their dropout masks: same features, batches in the same order, same
initial head, AdamW with the same decay mask, clipping and schedule, the same loss. Here, with
dropout off, that is checked step by step on a tiny random model, for token classification and
sequence classification: the loss, gradient norm and learning rate of every step, and the dev
scores at the end.
"""

import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import save_tiny_hf_bert  # noqa: E402

from benchmarks.studies import zh_end_to_end  # noqa: E402
from bert_jax.checkpoints import pretrained  # noqa: E402
from bert_jax.data.tokenization import WordPieceTokenizer  # noqa: E402
from bert_jax.finetuning import train as finetune_lib  # noqa: E402
from bert_jax.finetuning.tasks import features as tasks  # noqa: E402

WORDS = "北京 上海 张三 李四 公司 银行 今天 我们 去 了 很 好 不 喜欢 the river stone".split()
NAMES = {"张三": "PER", "李四": "PER", "北京": "LOC", "上海": "LOC", "银行": "ORG"}


def _write(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tiny Hugging Face BERT dir, {kind: (train, dev)}): character-level BIO tagging and a
    two-class task, 48 training rows each, of sentences of 3-9 random words."""
    root = tmp_path_factory.mktemp("trainer_parity")
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 48), ("dev", 16)):
        tagged, labelled = [], ["sentence\tlabel"]
        for _ in range(n):
            words = list(rng.choice(WORDS, rng.integers(3, 10)))
            for word in words:
                kind = NAMES.get(word)
                for i, char in enumerate(word if not word.isascii() else [word]):
                    tag = "O" if kind is None else f"{'B' if i == 0 else 'I'}-{kind}"
                    tagged.append(f"{char}\t{tag}")
            tagged.append("")
            labelled.append(f"{''.join(words)}\t{'neg' if '不' in words else 'pos'}")
        files.setdefault("token_classification", []).append(
            _write(root / f"tags_{split}.conll", tagged)
        )
        files.setdefault("classification", []).append(
            _write(root / f"labels_{split}.tsv", labelled)
        )
    tokenizer = WordPieceTokenizer.train(
        [p for pair in files.values() for p in pair], vocab_size=120
    )
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return save_tiny_hf_bert(root / "tiny_hf", tokenizer, **sizes)[0], files


def _config(kind: str, model_dir, train, dev):
    """configs/finetune/KIND.py's test mode, unpacked, without dropout, logging every step."""
    import importlib.util

    path = pathlib.Path(zh_end_to_end.REPO) / "configs" / "finetune" / f"{kind}.py"
    spec = importlib.util.spec_from_file_location(kind, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    config.init_checkpoint = str(model_dir)
    config.task.train_file, config.task.dev_file = str(train), str(dev)
    config.packing = False  # the Trainer's one sentence per row, in bert_jax's batch order
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.num_train_epochs, config.learning_rate, config.seed = 3.0, 5e-3, 3
    config.log_every_steps = 1
    return config


@pytest.mark.parametrize("kind", ["token_classification", "classification"])
def test_without_dropout_bert_jax_takes_the_trainers_steps(setup, tmp_path, kind):
    model_dir, files = setup
    train_file, dev_file = files[kind]
    config = _config(kind, model_dir, train_file, dev_file)
    result = finetune_lib.train_and_evaluate(config, tmp_path / "bert_jax")
    ours = [json.loads(line) for line in (tmp_path / "bert_jax" / "metrics.jsonl").open()]
    ours = [row for row in ours if "grad_norm" in row]

    tokenizer = pretrained.load_tokenizer(pretrained.inspect_checkpoint(model_dir))
    train = tasks.load_task(config, "train", tokenizer)
    dev = tasks.load_task(config, "dev", tokenizer, label_list=train.label_list)
    trainer, steps = zh_end_to_end.matched_trainer(config, model_dir, train, tmp_path, dropout=0.0)
    trainer.args.logging_steps = 1
    start = trainer.model.classifier.weight.detach().clone()
    trainer.train()
    theirs = [row for row in trainer.state.log_history if "grad_norm" in row]

    assert steps == 18 and [r["step"] for r in ours] == [r["step"] for r in theirs] == list(
        range(1, 19)
    )
    # The Trainer logs its loss rounded to 4 decimals.
    np.testing.assert_allclose([r["loss"] for r in ours], [r["loss"] for r in theirs], atol=2e-4)
    np.testing.assert_allclose(
        [r["grad_norm"] for r in ours], [r["grad_norm"] for r in theirs], rtol=2e-3
    )
    np.testing.assert_allclose(
        [r["learning_rate"] for r in ours], [r["learning_rate"] for r in theirs], rtol=1e-6
    )
    # Not vacuous: the steps moved the model (and the tagger learned its task).
    assert (trainer.model.classifier.weight - start).abs().max() > 1e-2
    if kind == "token_classification":
        assert ours[-1]["loss"] < 0.7 * ours[0]["loss"]

    predictions = trainer.predict(zh_end_to_end.trainer_rows(dev)).predictions
    scores = tasks.compute_metrics(config.task.kind, predictions, dev)
    main = "f1" if kind == "token_classification" else "accuracy"
    assert scores[main] == pytest.approx(result.eval_metrics[main], abs=1e-9)
