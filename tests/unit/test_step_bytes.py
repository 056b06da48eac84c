"""A guard on the memory traffic of the pretraining step: the compiler's bytes accessed per token
for a small BERT (the shipped BERT-base recipe at hidden 128, 2 layers: bfloat16, dropout 0.1 on
attention and layers, 30522-word vocabulary, sequence 128) compiled for one CPU device must stay
within TOLERANCE of the figure recorded in tests/data/step_bytes.json. A change that moves more
bytes per token fails here; re-record on purpose (and say why in docs/scaling.md):
    python tests/unit/test_step_bytes.py
The TPU figure (XLA:TPU, v5e 2x2) is guarded in tests/integration/test_plan.py.
"""

import importlib.util
import json
import pathlib

import jax

from bert_jax.pretraining.step import batch_shapes, build_pretrainer
from bert_jax.training import sharding

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
RECORDED = REPO_ROOT / "tests" / "data" / "step_bytes.json"
TOLERANCE = 0.03
SMALL_BERT = {"hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 2,
              "num_hidden_layers": 2}  # fmt: skip
ROWS = 8


def small_bert_config():
    spec = importlib.util.spec_from_file_location("bert_base", REPO_ROOT / "configs/bert_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("phase1")
    config.model.update(SMALL_BERT)
    config.batch_size = ROWS
    config.mesh.data = 1
    return config


def cpu_bytes_per_token() -> float:
    config = small_bert_config()
    mesh = sharding.make_mesh(config.mesh, jax.devices("cpu")[:1])
    pretrainer = build_pretrainer(config, mesh)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    with jax.set_mesh(mesh):
        lowered = pretrainer.train_step.lower(
            pretrainer.abstract_state, batch_shapes(config, ROWS), rng
        )
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["bytes accessed"]) / (ROWS * config.data.max_seq_length)


def test_cpu_step_bytes_per_token_as_recorded():
    recorded = json.loads(RECORDED.read_text())["cpu_bytes_per_token"]
    measured = cpu_bytes_per_token()
    assert abs(measured / recorded - 1) <= TOLERANCE, (
        f"the CPU train step moves {measured:,.0f} bytes per token, recorded {recorded:,.0f} "
        f"(tolerance {TOLERANCE:.0%}); if on purpose, re-record: python {__file__}"
    )


if __name__ == "__main__":  # re-record: python tests/unit/test_step_bytes.py (only on purpose)
    data = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    data["cpu_bytes_per_token"] = round(cpu_bytes_per_token())
    data["jax"] = jax.__version__
    RECORDED.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
