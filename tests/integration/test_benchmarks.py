"""Smoke test of the side-by-side benchmark harness: bert-tiny, one block of one step each."""

import argparse
import json
import math
import time

import pytest

from benchmarks import run_all


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    report = run_all.main(
        ["--tiny", "--reps", "1", "--steps", "1", "--warmup", "0", "--output-dir", str(out)]
    )
    return report, out


def test_reports_numbers_for_every_framework(tiny_report):
    report, out = tiny_report
    saved = json.loads((out / "results.json").read_text())
    assert saved["cases"] == json.loads(json.dumps(report["cases"]))
    (case,) = saved["cases"]
    assert case["errors"] == {}
    assert set(case["frameworks"]) == {"bert_jax", "hf_flax", "hf_torch"}
    for name, result in case["frameworks"].items():
        for key in ("tokens_per_s", "step_s", "cpu_s_per_step", "compile_s", "peak_rss_mib", "mfu"):
            value = result[key]
            assert isinstance(value, float) and math.isfinite(value) and value >= 0, (name, key)
        assert result["tokens_per_s"] == pytest.approx(4 * 128 / result["step_s"])
        assert 0 < result["mfu"] < 1
        assert math.isfinite(result["loss_first"]) and result["loss_first"] > 1.0  # ~ln(30522)
    for peer in ("hf_flax", "hf_torch"):
        ratios = case["ratios"][peer]
        expected = (
            case["frameworks"]["bert_jax"]["tokens_per_s"]
            / case["frameworks"][peer]["tokens_per_s"]
        )
        assert ratios["tokens_per_s"] == pytest.approx(expected)


def test_writes_table_and_chart(tiny_report):
    _, out = tiny_report
    table = (out / "results.md").read_text()
    assert "| tiny | 4 | 128 | HF Flax |" in table and "HF PyTorch" in table
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flops_count_dense_heads_for_peers():
    args = run_all.parse_args(["--tiny"])
    ours = run_all._flops_per_example(run_all.make_spec("bert_jax", "tiny", 4, 128, args))
    peer = run_all._flops_per_example(run_all.make_spec("hf_torch", "tiny", 4, 128, args))
    # The dense head adds 2 * 3 * (T - P) * H * V model FLOPs per example.
    assert peer - ours == pytest.approx(6 * (128 - 20) * (128 * 128 + 128 * 30522))


def test_predictions_per_seq_follows_the_reference():
    assert run_all.predictions_per_seq(128) == 20
    assert run_all.predictions_per_seq(512) == 80


def test_largest_batch_search(monkeypatch):
    from benchmarks import memory

    calls = []

    def fake_step_memory(preset, batch, seq_len, **kw):
        calls.append(batch)
        return {"peak": 1e9 + batch * 1e8}  # 1 GB fixed + 0.1 GB per row

    monkeypatch.setattr(memory, "step_memory", fake_step_memory)
    batch, peaks = memory.largest_batch("base", 128, budget_bytes=20e9)
    assert batch == 184  # the largest multiple of 8 with 1e9 + b * 1e8 <= 20e9 (b <= 190)
    assert peaks[batch] <= 20e9 < peaks[batch + 8]
    assert len(calls) == len(set(calls)) <= 12


def test_data_pipeline_command_is_recorded_without_local_paths(tmp_path, monkeypatch):
    """The published results must not carry the path of the machine they ran on."""
    shared = run_all.REPO.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip(f"{shared} not found: run_data_throughput skips before recording a command")

    class Done:
        returncode, stdout, stderr = 0, "measurement  ...\n", ""

    monkeypatch.setattr(run_all.subprocess, "run", lambda *args, **kwargs: Done())
    result = run_all.run_data_throughput(tmp_path)
    assert result["command"] == "python benchmarks/data_throughput.py --json=data_throughput.json"


def test_recorded_results_hold_no_absolute_local_paths():
    recorded = run_all.REPO / "benchmarks" / "recorded"
    for path in list(recorded.rglob("*.md")) + list(recorded.rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        for prefix in ("/work/", "/home/", "/root/", "/tmp/", "/Users/"):
            assert prefix not in text, f"{path} records a local path ({prefix}...)"


def test_zh_benchmark_reruns_a_finished_run_whose_settings_changed(tmp_path, monkeypatch):
    """benchmarks/studies/zh_end_to_end reuses a finished fine-tuning run only if it was made with
    the same config: a changed recipe (say a new --sentiment_learning_rate) runs again instead of
    reporting the old run's numbers under the new settings."""
    import argparse

    from benchmarks.studies import zh_end_to_end
    from bert_jax.finetuning import train as finetune_lib

    calls = []

    def fake_train(config, workdir):
        calls.append(config.learning_rate)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json(indent=2))
        return argparse.Namespace(eval_metrics={"accuracy": config.learning_rate})

    monkeypatch.setattr(finetune_lib, "train_and_evaluate", fake_train)
    data = tmp_path / "data"
    data.mkdir()
    files = {"sentiment_train": data / "train.tsv", "sentiment_dev": data / "dev.tsv"}
    init = tmp_path / "pretrain_char"
    target = tmp_path / "sentiment_char_seed0"

    def run(learning_rate):
        args = argparse.Namespace(sentiment_learning_rate=learning_rate, sentiment_epochs=2.0,
                                  batch_size=32, max_seq_length=128, ner_crf=True)  # fmt: skip
        return zh_end_to_end.finetune(args, files, "sentiment", init, 0, False, target)

    assert run(1e-3)["accuracy"] == 1e-3
    assert run(1e-3)["accuracy"] == 1e-3 and calls == [1e-3]  # the same settings: reused
    assert run(3e-4)["accuracy"] == 3e-4 and calls == [1e-3, 3e-4]  # changed: run again


def test_zh_benchmark_table_holds_only_the_seeds_asked_for():
    """A results.json from an earlier run with more seeds (or another recipe) must not leak its
    fine-tuning rows into this run's table; its pretraining rows are kept for reuse."""
    import argparse

    from benchmarks.studies import zh_end_to_end

    previous = {
        "pretrain": {"char": {"steps": [10, 5]}},
        "crf": {"scores": {}},
        "finetune": {"char": {"ner": {"0": {"f1": 0.7}, "3": {"f1": 0.1}}}},
        "trainer": {"char": {"ner": {"0": {"f1": 0.7}}}},
    }
    results = zh_end_to_end.fresh_results(previous, argparse.Namespace(seeds="0,1,2"))
    assert results["pretrain"] == previous["pretrain"] and results["crf"] == previous["crf"]
    assert results["finetune"] == {} and results["trainer"] == {}
    assert results["settings"] == {"seeds": "0,1,2"}


def test_zh_benchmark_recipes_reach_the_configs():
    """The NER recipe's CRF, head window and FGM reach the fine-tuning config (sentiment gets
    none); the Trainer's reference run drops them, since BertForTokenClassification has none,
    and is kept apart from the recipe's runs by its name."""
    import argparse

    from benchmarks.studies import zh_end_to_end

    args = argparse.Namespace(ner_learning_rate=3e-3, ner_epochs=30.0, sentiment_learning_rate=3e-4,
                              sentiment_epochs=5.0, batch_size=32, max_seq_length=128,
                              ner_crf=True, ner_head_window=1,
                              ner_adversarial_epsilon=1.0)  # fmt: skip
    plain = argparse.Namespace(**{**vars(args), "ner_crf": False, "ner_head_window": 0,
                                  "ner_adversarial_epsilon": 0})  # fmt: skip
    files = {k: f"/data/{k}" for k in ("ner_train", "ner_dev", "sentiment_train", "sentiment_dev")}
    init = zh_end_to_end.pathlib.Path("/runs/pretrain_char")
    ner = zh_end_to_end.finetune_config(args, files, "ner", init, 0, False)
    assert ner.crf and ner.head_window == 1 and ner.adversarial_epsilon == 1.0
    assert ner.learning_rate == 3e-3
    sentiment = zh_end_to_end.finetune_config(args, files, "sentiment", init, 0, False)
    assert not sentiment.crf and sentiment.adversarial_epsilon == 0.0 and not sentiment.head_window
    reference = zh_end_to_end.finetune_config(plain, files, "ner", init, 0, False)
    assert not reference.crf and reference.adversarial_epsilon == 0.0 and not reference.head_window
    names = {zh_end_to_end.run_name(a, "ner", "char", 0) for a in (args, plain)}
    assert names == {"ner_crf_window1_fgm_char_seed0", "ner_char_seed0"}


def test_zh_benchmark_reports_the_mean_trainer_difference_over_seeds():
    from benchmarks.studies import zh_end_to_end

    rows = {"0": {"f1": 0.80}, "1": {"f1": 0.78}}
    ours = {"0": {"f1": 0.79}, "1": {"f1": 0.785}}
    results = {"pretrain": {}, "finetune": {}, "trainer": {"char": {"ner": rows}},
               "trainer_reference": {"char": {"ner": ours}}, "settings": {}}  # fmt: skip
    table = zh_end_to_end.markdown(results)
    assert "seed 0: bert_jax (same head) 79.00, Trainer 80.00, difference -1.00 points" in table
    assert "seed 1: bert_jax (same head) 78.50, Trainer 78.00, difference +0.50 points" in table
    assert "ner f1, char: mean difference over 2 seeds -0.25 points" in table


def test_zh_benchmark_reuses_runs_from_before_a_setting_existed(tmp_path):
    """A finished run whose config.json predates a fine-tuning setting is reused while that
    setting is at its default, and run again when it is not."""
    import argparse
    import json

    from benchmarks.studies import zh_end_to_end

    args = argparse.Namespace(ner_learning_rate=3e-3, ner_epochs=30.0, batch_size=32,
                              max_seq_length=128, ner_crf=False, ner_head_window=0,
                              ner_adversarial_epsilon=0.0)  # fmt: skip
    files = {"ner_train": "/data/train.conll", "ner_dev": "/data/dev.conll"}
    config = zh_end_to_end.finetune_config(args, files, "ner", tmp_path / "init", 0, False)
    saved = json.loads(config.to_json())
    del saved["dropout_seed"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert zh_end_to_end._same_config(tmp_path / "config.json", config)
    config.dropout_seed = 5
    assert not zh_end_to_end._same_config(tmp_path / "config.json", config)
    config.dropout_seed, config.learning_rate = -1, 1e-3
    assert not zh_end_to_end._same_config(tmp_path / "config.json", config)


def test_zh_benchmark_reports_what_dropout_alone_changes():
    from benchmarks.studies import zh_end_to_end

    reruns = {"1001": {"f1": 0.7906}, "1002": {"f1": 0.7973}}
    results = {"trainer_reference": {"char": {"ner": {"0": {"f1": 0.7834}}}},
               "dropout_only": {"char": {"ner": reruns}}}  # fmt: skip
    (line,) = zh_end_to_end.dropout_only_lines(results)
    assert "ner f1, char, seed 0, bert_jax (same head) with other dropout masks alone: " in line
    assert "alone: 78.34 (its own), " in line
    assert "79.06 (dropout_seed 1001), 79.73 (dropout_seed 1002); 79.0 ± 0.7, range 1.39" in line


def test_overheads_benchmark_times_each_phase_once_and_compares_host_times():
    """finetune_overheads: a nested phase's time is its own, not also its caller's; the host
    section reports both sizes and their ratio."""
    from benchmarks.studies import finetune_overheads

    timer = finetune_overheads.PhaseTimer()
    with timer.phase("eval"):
        time.sleep(0.02)
        with timer.phase("eval compile"):
            time.sleep(0.1)
        timer.set_part("epoch 2")
        with timer.phase("best save"):
            time.sleep(0.05)
    assert 0.02 <= timer.wall["setup"]["eval"] < 0.1 <= timer.wall["setup"]["eval compile"]
    assert timer.wall["epoch 2"]["best save"] >= 0.05 > timer.wall["epoch 2"]["eval"]
    results = {}
    args = argparse.Namespace(rows="500,2000", host_steps=3)
    finetune_overheads.section_host(args, results)
    runs = results["host"]["runs"]
    assert [r["rows"] for r in runs] == [500, 2000] and all(r["step_ms"] > 0 for r in runs)
    assert results["host"]["step_ratio"] == pytest.approx(runs[1]["step_ms"] / runs[0]["step_ms"])
    assert "| **ratio** |" in finetune_overheads.markdown(results)


def _zh_pretraining_configs(tmp_path, *masking):
    """zh_end_to_end's pretraining config of (variant, phase), with --masking definitions."""
    import argparse

    from benchmarks.studies import zh_end_to_end

    args = argparse.Namespace(pretrain_config="configs/zh_small.py", pretrain_mode="",
                              vocab_size=8000, pretrain_steps=0, pretrain_phase2_steps=0,
                              masking=list(masking))  # fmt: skip
    files = {"corpus": tmp_path / "c.txt", "vocab": tmp_path / "vocab.txt"}
    return lambda variant, phase: zh_end_to_end.pretraining_config(
        args, files, tmp_path, variant, phase
    )


def test_zh_benchmark_masking_variants_reach_the_pretraining_config(tmp_path):
    """A masking variant's data keys reach both phases' configs, the rate schedule phase 1 only
    (with the predictions its start rate needs); --masking defines a variant of its own."""
    config = _zh_pretraining_configs(
        tmp_path, "cap3=whole_word_masking:true;max_masked_word_length:3"
    )

    def data(variant, phase):
        return config(variant, phase).data

    assert data("wwm_span", "phase2").span_length_weights == "0.4,0.3,0.2,0.1"
    assert data("wwm_span", "phase2").whole_word_masking
    assert not data("char", "phase1").whole_word_masking
    first, second = data("schedule", "phase1"), data("schedule", "phase2")
    assert (first.masked_lm_prob_start, first.max_predictions_per_seq) == (0.3, 10)  # 32 x 0.3
    assert (second.masked_lm_prob_start, second.max_predictions_per_seq) == (0.0, 20)
    assert not data("nonsp", "phase1").next_sentence_prediction
    assert not data("nonsp", "phase2").next_sentence_prediction
    assert data("char", "phase2").next_sentence_prediction
    cap = data("cap3", "phase1")
    assert cap.whole_word_masking is True and cap.max_masked_word_length == 3
    with pytest.raises(SystemExit, match="unknown variant 'nope'"):
        data("nope", "phase1")


def test_zh_benchmark_variants_may_lengthen_phase_1(tmp_path):
    """`long` (and --masking's phase1_steps) lengthens phase 1 alone, keeping its evaluation and
    checkpoint cadence; phase 2 and the data keys stay the recipe's."""
    config = _zh_pretraining_configs(tmp_path, "short=phase1_steps:300;span_length_weights:0.5,0.5")

    recipe, long = config("char", "phase1"), config("long", "phase1")
    assert long.num_train_steps == 14_000 and recipe.num_train_steps == 10_000
    assert (long.eval_every_steps, long.checkpoint_every_steps) == (
        recipe.eval_every_steps, recipe.checkpoint_every_steps)  # fmt: skip
    assert long.data.to_dict() == recipe.data.to_dict()  # phase1_steps is not a data key
    assert config("long", "phase2").to_dict() == config("char", "phase2").to_dict()
    short = config("short", "phase1")
    assert short.num_train_steps == 300 and short.data.span_length_weights == "0.5,0.5"
    with pytest.raises(SystemExit, match="data.nope is not a config key"):
        _zh_pretraining_configs(tmp_path, "bad=nope:1")("bad", "phase1")


def test_zh_benchmark_masking_rows_name_the_seeds_of_either_task(tmp_path):
    """A variant fine-tuned on sentiment alone still lists its seeds in WORKDIR/masking.md."""
    from benchmarks.studies import zh_end_to_end

    results = {
        "pretrain": {"span": {"steps": [10, 5], "masking": {"span_length_weights": "1"},
                              "eval_mlm_accuracy": 0.25}},
        "finetune": {"span": {"sentiment": {"0": {"accuracy": 0.8}, "1": {"accuracy": 0.9}}}},
    }  # fmt: skip
    path = tmp_path / "masking.md"
    zh_end_to_end.append_masking_rows(results, None, path)
    row = path.read_text().splitlines()[-1].split(" | ")
    assert row[3:7] == ["0,1", "-", "85.0 ± 7.1", "25.0"]
