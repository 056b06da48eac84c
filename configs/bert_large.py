r"""BERT-Large (L24/H1024/A16) with the published recipe; same phases as configs/bert_base.py.

  python -m bert_jax.pretrain --config configs/bert_large.py:phase1 --workdir gs://BUCKET/bert_large_p1 \
      --config.data.input_files='gs://BUCKET/corpus/*.txt' --config.data.vocab_file=vocab.txt \
      --config.mesh.data=-1 --config.mesh.fsdp=4
  python -m bert_jax.pretrain --config configs/bert_large.py:phase2 --workdir gs://BUCKET/bert_large_p2 \
      --config.init_checkpoint=gs://BUCKET/bert_large_p1 --config.model.remat_policy=dots
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bert_base import recipe  # noqa: E402


def get_config(phase: str = "phase1"):
    return recipe("large", phase)
