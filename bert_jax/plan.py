r"""Plan a pretraining run on a TPU slice from a laptop: compile the sharded train and eval steps
for the slice's topology and print memory per chip, FLOPs, collectives and a roofline step time.

  python -m bert_jax.plan --config configs/bert_base.py --topology=v5e:4x4 \
      [--config.batch_size=512 ...] [--out plan.json] [--sweep] [--num_slices=2]

--topology takes libtpu's names (v5e:4x4, v5p:2x2x4) or Cloud accelerator types (v5e-16);
--num_slices=N joins N slices by DCN; --sweep tries mesh layouts and microbatches and picks the
fastest that fits (docs/scaling.md). Needs libtpu: `pip install -e ".[tpu]"`.
"""

from absl import flags

from bert_jax import entry
from bert_jax.planning import cli
from bert_jax.planning.cli import main

cli.define_flags()
flags.adopt_module_key_flags(cli)  # --help lists its flags

if __name__ == "__main__":
    entry.main(main)
