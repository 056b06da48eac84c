r"""Pretrain BERT (masked LM + next sentence).

  python -m bert_jax.pretrain --config configs/demo.py --workdir runs/demo \
      [--config.num_train_steps=2000 --config.batch_size=64 ...]

The same command on the same workdir resumes from its newest checkpoint.
"""

from absl import flags

from bert_jax import entry

_CONFIG, _WORKDIR = entry.define_config_and_workdir("Directory for checkpoints and metrics.")
flags.adopt_module_key_flags(entry)  # --help lists --config and --workdir


def main(argv):
    from bert_jax.pretraining.train import train_and_evaluate  # imported here: --help stays fast

    entry.run(argv, train_and_evaluate, _CONFIG, _WORKDIR, output_dirs=("data.data_dir",))


if __name__ == "__main__":
    entry.main(main)
