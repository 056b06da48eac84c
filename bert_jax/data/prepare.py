r"""Tokenize a text corpus into the TFDS dataset that pretraining reads.

  python -m bert_jax.data.prepare --input_files=a.txt,more/*.txt --vocab_file=vocab.txt \
      --data_dir=DIR [--lowercase=false] [--validation_fraction=0.05] [--num_workers=N] \
      [--word_segmenter=jieba] [--beam_pipeline_options=runner=DataflowRunner,...]

Input: one sentence per line, a blank line between documents (gzip allowed; paths may be gs://).
Prints a summary and the dataset's directory, which `--config.data.dataset_dir` takes; unchanged
inputs reuse the dataset. docs/pretraining.md has the details.
"""

from absl import flags

from bert_jax import entry
from bert_jax.data.corpus import cli
from bert_jax.data.corpus.cli import main

cli.define_flags()
flags.adopt_module_key_flags(cli)  # --help lists its flags

if __name__ == "__main__":
    entry.main(main)
