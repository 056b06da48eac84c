"""The tiny random BERT the fine-tuning, pipeline and Trainer-parity tests start from."""

import pathlib

import jax
import numpy as np

from bert_jax.convert import hf
from bert_jax.model.modeling import BertConfig


def save_tiny_hf_bert(
    directory: pathlib.Path, tokenizer, seed: int = 0, **sizes
) -> tuple[pathlib.Path, BertConfig, dict]:
    """A random BERT (hidden 16, 1 layer, 2 heads unless `sizes` says otherwise) over the
    tokenizer's vocabulary, saved in Hugging Face format with its vocab.txt.
    Returns (directory, config, params)."""
    shape = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, max_position_embeddings=64, **{**shape, **sizes}
    )
    params = hf.init_params(config, jax.random.key(seed))
    hf.save_hf_checkpoint(config, params, directory)
    tokenizer.save_vocab(directory / "vocab.txt")
    return directory, config, params


MODERN_SHAPE = dict(
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=24,
    type_vocab_size=0,
    position_embedding_type="rope",
    pre_layer_norm=True,
    ffn_type="geglu",
    use_bias=False,
    local_attention_window=8,
    global_attn_every_n_layers=3,
    pooler="cls_head",
    layer_norm_eps=1e-5,
)


def tiny_modern_config(vocab_size: int, **changes) -> BertConfig:
    """A tiny ModernBERT-shaped BertConfig (rope, GeGLU, pre-LN, no biases, a local window of 8
    on layers 1 and 2, no token types)."""
    return BertConfig(vocab_size=vocab_size, max_position_embeddings=64, **MODERN_SHAPE, **changes)


def train_tiny_bpe(path: pathlib.Path, texts) -> pathlib.Path:
    """A byte-level BPE tokenizer.json trained on `texts`, with ModernBERT's special tokens
    ([MASK] strips the space before it, as ModernBERT's does). Returns the path."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", AddedToken("[MASK]", lstrip=True)]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.save(str(path))
    return path


# Words of the synthetic tasks.
FILLER = "the a of river stone blue cat runs quickly under table green lamp".split()


def write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def synthetic_tasks(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """A keyword task (pairs: label from the second sentence), a regression on the keyword and a
    BIO tagging task ("john smith" is a PER entity), 160 train / 48 dev rows each."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 160), ("dev", 48)):
        pairs, values, tagged = ["sentence1\tsentence2\tlabel"], ["sentence\tlabel"], []
        for i in range(n):
            words = list(rng.choice(FILLER, 5))
            positive = i % 2 == 0
            second = words[:3] + ["good" if positive else "bad"] + words[3:]
            pairs.append(f"{' '.join(words)}\t{' '.join(second)}\t{'yes' if positive else 'no'}")
            values.append(f"{' '.join(second)}\t{1.0 if positive else -1.0:.1f}")
            names = ["john", "smith"] if positive else ["mary"]
            sentence = words[:2] + names + words[2:]
            tags = ["O", "O"] + (["B-PER", "I-PER"] if positive else ["B-PER"]) + ["O"] * 3
            tagged += [f"{w}\t{t}" for w, t in zip(sentence, tags, strict=True)] + [""]
        files[f"pairs_{split}"] = write_lines(directory / f"pairs_{split}.tsv", pairs)
        files[f"values_{split}"] = write_lines(directory / f"values_{split}.tsv", values)
        files[f"tags_{split}"] = write_lines(directory / f"tags_{split}.conll", tagged)
    return files
