r"""Fine-tune a pretrained BERT on a classification, regression, tagging or SQuAD task.

  python -m bert_jax.finetune --config configs/finetune/classification.py --workdir runs/sst2 \
      --config.init_checkpoint=PATH --config.task.train_file=train.tsv \
      --config.task.dev_file=dev.tsv [--config.freeze_encoder --config.do_predict ...]

PATH is a Hugging Face BERT directory or a bert_jax pretraining workdir (or one of its
checkpoints). The same command on the same workdir resumes from its newest checkpoint.
"""

from absl import flags

from bert_jax import entry

_CONFIG, _WORKDIR = entry.define_config_and_workdir("Directory for checkpoints, metrics, results.")
flags.adopt_module_key_flags(entry)  # --help lists --config and --workdir


def main(argv):
    from bert_jax.finetuning.train import train_and_evaluate  # imported here: --help stays fast

    entry.run(argv, train_and_evaluate, _CONFIG, _WORKDIR, output_dirs=("task.tfds_data_dir",))


if __name__ == "__main__":
    entry.main(main)
