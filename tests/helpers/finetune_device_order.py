"""Fine-tunes with a config from a JSON file on a mesh whose devices are in a chosen order (a
test-only hook; the product orders devices by topology):

  python tests/helpers/finetune_device_order.py CONFIG.json WORKDIR [interleaved]

"interleaved" puts the processes' devices alternately along the mesh (p0d0, p1d0, p0d1, p1d1),
as a TPU torus order can, so that no process's batch rows form one block.
"""

import json
import pathlib
import sys

import jax
import ml_collections

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # this checkout's bert_jax
from bert_jax import distributed, finetune_lib, sharding  # noqa: E402


def interleaved(devices):
    by_process = {}
    for device in sorted(devices, key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(device.process_index, []).append(device)
    return [d for group in zip(*by_process.values(), strict=True) for d in group]


def main(config_file: str, workdir: str, order: str = "default") -> None:
    distributed.initialize_if_needed()
    config = ml_collections.ConfigDict(json.loads(open(config_file).read()))
    if order == "interleaved":
        make_mesh = sharding.make_mesh

        def interleaved_mesh(mesh_config, devices=None):
            mesh = make_mesh(mesh_config, interleaved(devices or jax.devices()))
            print("mesh device processes:", [d.process_index for d in mesh.devices.flat])
            return mesh

        sharding.make_mesh = interleaved_mesh
    finetune_lib.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    main(*sys.argv[1:])
