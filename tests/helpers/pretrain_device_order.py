"""Pretrains with a config from a JSON file on a mesh whose devices are in a chosen order (the
orders of `finetune_device_order`), then prints this process's batch share:

  python tests/helpers/pretrain_device_order.py CONFIG.json WORKDIR [interleaved|swapped]
"""

import json
import sys

import jax
import ml_collections
from finetune_device_order import use_device_order  # also puts this checkout on sys.path

from bert_jax.pretraining import train as train_lib
from bert_jax.training import distributed, sharding


def main(config_file: str, workdir: str, order: str = "default") -> None:
    distributed.initialize_if_needed()
    config = ml_collections.ConfigDict(json.loads(open(config_file).read()))
    use_device_order(order)
    train_lib.train_and_evaluate(config, workdir)
    share = sharding.batch_share(sharding.make_mesh(config.mesh))
    print(f"process {jax.process_index()} fed batch share {share}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
