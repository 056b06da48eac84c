r"""Why whole-word masking hurts NER at zh_small's size: what it masks on ../shared/data/zh.

  nice -n 10 python -m benchmarks.studies.zh_masking_diagnosis --workdir runs/zh_e2e \
      [--documents=2000] [--write_docs] \
      [--checkpoint=runs/zh_e2e/pretrain_char,runs/zh_e2e/pretrain_wwm]

Examples are built by the pipeline's own functions (`examples.pair_tokens`, `build_examples`:
the real masking) from the prepared dataset (jieba word starts; WORKDIR/pretraining_data and
WORKDIR/vocab.txt as zh_end_to_end.py, prepared or trained if missing), with each phase's
configs/zh_small.py options, under character and whole-word masking. Measured: tokens per masked
word, the budget's share taken by long words, the masked tokens that are characters of a NER
entity (the entity strings of zh/ner/train.conll found in the rows) and how many of those have
their whole entity hidden, and jieba's granularity on the NER entities. With --checkpoint
(pretraining workdirs, comma-separated), each one's masked-LM loss by jieba word length and by
entity / other position, on the last phase's character- and whole-word-masked rows. Prints a
Markdown table; --write_docs puts it in docs/chinese.md.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import pathlib
import re
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED_ZH = REPO.parent / "shared" / "data" / "zh"
DOCS = REPO / "docs" / "chinese.md"
BEGIN, END = "<!-- zh_masking_diagnosis: begin -->", "<!-- zh_masking_diagnosis: end -->"
LENGTHS = ("1", "2", "3", "4", "5+")


def _bucket(size: int) -> str:
    return LENGTHS[min(size, 5) - 1]


def zh_config(phase: str, vocab: pathlib.Path, corpus: pathlib.Path, data_dir: pathlib.Path):
    spec = importlib.util.spec_from_file_location("zh_config", REPO / "configs" / "zh_small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(phase)
    config.data.input_files, config.data.vocab_file = str(corpus), str(vocab)
    config.data.data_dir, config.data.show_progress = str(data_dir), False
    return config


def entity_table(conll: pathlib.Path) -> tuple[dict[str, str], list]:
    """{entity string: type} and the sentences [(chars, tags)] of a BIO CoNLL file."""
    from benchmarks.studies.zh_crf import read_sentences

    sentences = read_sentences(conll)
    strings = {}
    for chars, tags in sentences:
        for start, stop, kind in spans(tags):
            strings.setdefault("".join(chars[start:stop]), kind)
    return strings, sentences


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """(start, stop, type) of the entities of a tag sequence (seqeval's chunking)."""
    from bert_jax.finetuning.scores import bio_entities

    return [(first, last + 1, kind) for kind, first, last in bio_entities(tags)]


def jieba_granularity(sentences, limit: int, seed: int) -> dict[str, collections.Counter]:
    """Per entity type: how jieba segments the entity (one word, inside a longer word, several
    whole words, or across a word boundary)."""
    from bert_jax.data.corpus.words import jieba_words

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))[: limit or len(sentences)]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for index in order:
        chars, tags = sentences[index]
        bounds, position = {0}, 0
        for word in jieba_words("".join(chars)):
            position += len(word)
            bounds.add(position)
        for start, stop, kind in spans(tags):
            inner = [b for b in bounds if start < b < stop]
            if start in bounds and stop in bounds:
                counts[kind]["one word" if not inner else "several words"] += 1
            elif not inner:
                counts[kind]["inside a longer word"] += 1
            else:
                counts[kind]["across a boundary"] += 1
    return counts


def build_rows(prepared, options, vocab, documents: int, seed: int):
    """Examples of `documents` seeded random documents, as the pipeline builds them, with their
    word starts (bool [n, L], segment starts marked)."""
    from bert_jax.data import corpus
    from bert_jax.data import examples as pretraining

    source = prepared.data_source("train")
    keys = np.random.default_rng(seed).permutation(len(source))[:documents]
    docs = source.__getitems__(sorted(keys.tolist()))
    starts = np.concatenate([corpus.word_starts(d, vocab.subword_mask) for d in docs])
    tokens = np.concatenate([d["tokens"] for d in docs])
    pairs = pretraining.pair_tokens(
        np.concatenate([d["sentence_lengths"] for d in docs]),
        np.array([len(d["sentence_lengths"]) for d in docs], np.int64),
        [seed, 0],
        options,
    )
    token_source = pretraining.TokenSource(tokens, vocab, starts)
    word_starts = token_source.rows(pairs, options.max_seq_length)["word_starts"]
    batch = pretraining.build_examples(token_source, pairs, [seed, 1], options, vocab)
    return batch, word_starts


def entity_marks(ids: np.ndarray, tokens: list[str], entities: dict[str, str], longest: int):
    """int [L]: 1 + index of the entity occurrence each position belongs to (0: none), by
    greedy longest match of the entity strings over the row's one-character tokens."""
    text = [t.removeprefix("##") if len(t.removeprefix("##")) == 1 else "\0" for t in tokens]
    marks = np.zeros(len(ids), np.int64)
    i, found = 0, 0
    while i < len(ids):
        for size in range(min(longest, len(ids) - i), 1, -1):
            if "".join(text[i : i + size]) in entities:
                found += 1
                marks[i : i + size] = found
                i += size
                break
        else:
            i += 1
    return marks


def row_words(batch, word_starts):
    """Per row: the (start, stop) of its words and int [L] the word of each position (-1 none)."""
    b_start = np.argmax(batch["token_type_ids"], axis=1)
    length = batch["attention_mask"].sum(1)
    for row in range(len(word_starts)):
        inside = np.zeros(word_starts.shape[1], bool)
        inside[1 : b_start[row] - 1] = True
        inside[b_start[row] : length[row] - 1] = True
        word_of = np.full(word_starts.shape[1], -1)
        bounds = []
        for k, start in enumerate(np.flatnonzero(word_starts[row] & inside)):
            stop = start + 1
            while stop < len(inside) and inside[stop] and not word_starts[row, stop]:
                stop += 1
            word_of[start:stop] = k
            bounds.append((int(start), int(stop)))
        yield bounds, word_of


def masked_positions(batch) -> np.ndarray:
    masked = np.zeros(batch["input_ids"].shape, bool)
    rows, cols = np.nonzero(batch["masked_lm_weights"])
    masked[rows, batch["masked_lm_positions"][rows, cols]] = True
    return masked


def all_entity_marks(batch, tokenizer, entities: dict[str, str]) -> np.ndarray:
    from bert_jax.data import examples as pretraining

    original = pretraining.original_ids(batch)
    longest = max(len(e) for e in entities)
    return np.stack(
        [
            entity_marks(ids, tokenizer.convert_ids_to_tokens(ids.tolist()), entities, longest)
            for ids in original
        ]
    )


def masking_statistics(batch, word_starts, marks: np.ndarray) -> dict:
    masked = masked_positions(batch)
    words, tokens_by_word = collections.Counter(), collections.Counter()
    masked_entity = hidden_entity = in_whole_word = 0
    for row, (bounds, word_of) in enumerate(row_words(batch, word_starts)):
        for start, stop in bounds:
            if masked[row, start:stop].any():
                words[_bucket(stop - start)] += 1
                tokens_by_word[_bucket(stop - start)] += int(masked[row, start:stop].sum())
        for position in np.flatnonzero(masked[row] & (marks[row] > 0)):
            masked_entity += 1
            hidden_entity += bool(masked[row][marks[row] == marks[row, position]].all())
            start, stop = bounds[word_of[position]]
            in_whole_word += stop - start >= 2 and bool(masked[row, start:stop].all())
    total = int(masked.sum())
    return {
        "masked": total,
        "words": words,
        "tokens_by_word": tokens_by_word,
        "entity_share": masked_entity / total,
        "hidden_share": hidden_entity / max(masked_entity, 1),
        "whole_word_share": in_whole_word / max(masked_entity, 1),
    }


def mlm_losses(checkpoint: str, batch, word_starts, marks: np.ndarray) -> dict:
    """Mean masked-LM loss (nats) of a pretraining checkpoint on these rows' predictions, by the
    length of the jieba word holding the position and by entity / other position."""
    import jax

    from bert_jax.checkpoints import pretrained
    from bert_jax.model.modeling import BertForPreTraining

    info = pretrained.inspect_checkpoint(checkpoint)
    params = pretrained.load_pretraining_params(info, announce=False)
    model = BertForPreTraining(info.bert_config)

    @jax.jit
    def losses(input_ids, token_type_ids, attention_mask, positions, labels):
        logits = model.apply(
            {"params": params}, input_ids, token_type_ids, attention_mask, positions
        ).mlm_logits
        log_p = jax.nn.log_softmax(logits.astype(np.float32), axis=-1)
        return -np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]

    nll = np.concatenate(
        [
            np.asarray(
                losses(
                    *(
                        batch[k][i : i + 256]
                        for k in (
                            "input_ids",
                            "token_type_ids",
                            "attention_mask",
                            "masked_lm_positions",
                            "masked_lm_ids",
                        )
                    )
                )
            )
            for i in range(0, len(batch["input_ids"]), 256)
        ]
    )
    groups = collections.defaultdict(list)
    for row, (bounds, word_of) in enumerate(row_words(batch, word_starts)):
        for slot in np.flatnonzero(batch["masked_lm_weights"][row]):
            position = batch["masked_lm_positions"][row, slot]
            if word_of[position] < 0:
                continue
            start, stop = bounds[word_of[position]]
            groups[f"word of {_bucket(stop - start)}"].append(nll[row, slot])
            groups["entity" if marks[row, position] else "other"].append(nll[row, slot])
    return {k: (float(np.mean(v)), len(v)) for k, v in sorted(groups.items())}


def markdown(results: dict) -> str:
    lines = []
    for phase, row in results["phases"].items():
        lines += [
            f"Phase {phase} (sequence {row['max_seq_length']}, {row['examples']} examples of "
            f"{row['documents']} documents):",
            "",
            "| masking | masked tokens | words hit, of 1 / 2 / 3 / 4 / 5+ tokens (% of words hit) "
            "| budget taken by words of >= 3 / >= 4 tokens | masked tokens in a NER entity "
            "| of those, whole entity hidden | of those, in a jieba word masked whole |",
            "|---|---|---|---|---|---|---|",
        ]
        for variant, stats in row["variants"].items():
            words = sum(stats["words"].values())
            shares = " / ".join(f"{100 * stats['words'][k] / words:.1f}" for k in LENGTHS)
            tokens = stats["tokens_by_word"]
            long3 = sum(tokens[k] for k in ("3", "4", "5+")) / stats["masked"]
            long4 = sum(tokens[k] for k in ("4", "5+")) / stats["masked"]
            lines.append(
                f"| {variant} | {stats['masked']} | {shares} | {100 * long3:.1f}% / "
                f"{100 * long4:.1f}% | {100 * stats['entity_share']:.1f}% | "
                f"{100 * stats['hidden_share']:.1f}% | {100 * stats['whole_word_share']:.1f}% |"
            )
        lines.append("")
    kinds = ("one word", "inside a longer word", "several words", "across a boundary")
    lines += [
        f"jieba on the NER entities ({results['granularity_sentences']} sentences of "
        "ner/train.conll):",
        "",
        "| type | entities | " + " | ".join(kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for kind, counts in sorted(results["granularity"].items()):
        total = sum(counts.values())
        cells = " | ".join(f"{100 * counts.get(k, 0) / total:.1f}%" for k in kinds)
        lines.append(f"| {kind} | {total} | {cells} |")
    for checkpoint, losses in results.get("losses", {}).items():
        lines += ["", f"Masked-LM loss (nats; predictions) of {checkpoint}:", ""]
        lines += ["| rows | " + " | ".join(losses["char"]) + " |"]
        lines += ["|---|" + "---|" * len(losses["char"])]
        for variant, groups in losses.items():
            cells = " | ".join(f"{groups[k][0]:.2f} ({groups[k][1]})" if k in groups else "-"
                               for k in losses["char"])  # fmt: skip
            lines.append(f"| {variant}-masked | {cells} |")
    return "\n".join(lines)


def write_docs(table: str, command: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    block = f"{BEGIN}\n\n    {command}\n\n{table}\n\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)  # fmt: skip
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/zh_e2e")
    parser.add_argument("--shared", default=str(SHARED_ZH), help="the zh/ data folder")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--phases", default="phase1,phase2")
    parser.add_argument("--documents", type=int, default=2000, help="documents sampled")
    parser.add_argument("--granularity_sentences", type=int, default=5000, help="0 = all")
    parser.add_argument("--checkpoint", default="", help="pretraining workdirs (comma-separated): "
                        "their MLM losses")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write_docs", action="store_true", help="the table into chinese.md")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bert_jax.data import examples as pretraining
    from bert_jax.data import input_pipeline
    from bert_jax.data.tokenization import WordPieceTokenizer

    shared, workdir = pathlib.Path(args.shared), pathlib.Path(args.workdir)
    if not shared.exists():
        print(f"{shared} is missing: this study needs ../shared/data/zh")
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, vocab_file = shared / "corpus" / "pretrain.txt", workdir / "vocab.txt"
    if not vocab_file.exists():
        WordPieceTokenizer.train([corpus], args.vocab_size).save_vocab(vocab_file)
    entities, sentences = entity_table(shared / "ner" / "train.conll")
    results = {"phases": {}, "granularity_sentences": args.granularity_sentences or len(sentences)}
    rows_for_losses = {}
    for phase in args.phases.split(","):
        config = zh_config(phase, vocab_file, corpus, workdir / "pretraining_data")
        prepared = input_pipeline.open_dataset(config.data)
        tokenizer = prepared.tokenizer()
        vocab = pretraining.Vocabulary.from_tokenizer(tokenizer)
        row = {"max_seq_length": config.data.max_seq_length, "variants": {}}
        for variant in ("char", "wwm"):
            config.data.whole_word_masking = variant == "wwm"
            options = input_pipeline.example_options(config.data)
            batch, word_starts = build_rows(prepared, options, vocab, args.documents, args.seed)
            marks = all_entity_marks(batch, tokenizer, entities)
            row["variants"][variant] = masking_statistics(batch, word_starts, marks)
            row["examples"], row["documents"] = len(batch["input_ids"]), args.documents
            rows_for_losses[variant] = (batch, word_starts, marks)
        results["phases"][phase] = row
        print(f"{phase}: {row['examples']} examples", flush=True)
    results["losses"] = {  # on the last phase's rows
        checkpoint: {v: mlm_losses(checkpoint, *r) for v, r in rows_for_losses.items()}
        for checkpoint in filter(None, args.checkpoint.split(","))
    }
    results["granularity"] = jieba_granularity(sentences, args.granularity_sentences, args.seed)
    table = markdown(results)
    print(table)
    if args.write_docs:
        command = "python -m benchmarks.studies.zh_masking_diagnosis " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        write_docs(table, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
