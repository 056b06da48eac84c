"""Fine-tunes with a config from a JSON file on a mesh whose devices are in a chosen order (a
test-only hook; the product orders devices by topology):

  python tests/helpers/finetune_device_order.py CONFIG.json WORKDIR [interleaved|swapped]

"interleaved" puts the processes' devices alternately along the mesh (p0d0, p1d0, p0d1, p1d1),
as a TPU torus order can, so that no process's batch rows form one block; "swapped" puts the
processes in reverse order (p1d0, p1d1, p0d0, p0d1), so process 1 holds the first rows.
"""

import json
import pathlib
import sys

import jax
import ml_collections

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # this checkout's bert_jax
from bert_jax.finetuning import train as finetune_lib
from bert_jax.training import (
    distributed,  # noqa: E402
    sharding,
)


def _by_process(devices) -> list[list]:
    by_process = {}
    for device in sorted(devices, key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(device.process_index, []).append(device)
    return list(by_process.values())


def interleaved(devices):
    return [d for group in zip(*_by_process(devices), strict=True) for d in group]


def swapped(devices):
    return [d for group in reversed(_by_process(devices)) for d in group]


ORDERS = {"interleaved": interleaved, "swapped": swapped}


def use_device_order(order: str) -> None:
    """Makes `sharding.make_mesh` lay its devices out in `order` ("default": unchanged)."""
    if order == "default":
        return
    make_mesh = sharding.make_mesh

    def ordered_mesh(mesh_config, devices=None):
        mesh = make_mesh(mesh_config, ORDERS[order](devices or jax.devices()))
        print("mesh device processes:", [d.process_index for d in mesh.devices.flat])
        return mesh

    sharding.make_mesh = ordered_mesh


def main(config_file: str, workdir: str, order: str = "default") -> None:
    distributed.initialize_if_needed()
    config = ml_collections.ConfigDict(json.loads(open(config_file).read()))
    use_device_order(order)
    finetune_lib.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(*sys.argv[1:])
