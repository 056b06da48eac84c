"""The tiny random BERT the fine-tuning, pipeline and Trainer-parity tests start from."""

import pathlib

import jax

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
