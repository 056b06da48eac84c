r"""Export a bert_jax workdir (or any loadable checkpoint) to Hugging Face or TF1.

  python -m bert_jax.export runs/demo --out runs/demo_hf            # Hugging Face (safetensors)
  python -m bert_jax.export runs/sst --out runs/sst_hf  # fine-tuned: BertForSequenceClassification
  python -m bert_jax.export runs/demo --out runs/demo_tf1 --format=tf1  # google-research/bert
  python -m bert_jax.export runs/emb --out runs/emb_st --format=sentence-transformers

A fine-tuned workdir becomes its kind's transformers task model (--encoder_only: BertModel);
--format=tf1 needs TensorFlow (`pip install -e ".[tf]"`).
"""

from absl import flags

from bert_jax import entry
from bert_jax.convert import export
from bert_jax.convert.export import main

export.define_flags()
flags.adopt_module_key_flags(export)  # --help lists its flags

if __name__ == "__main__":
    entry.main(main)
