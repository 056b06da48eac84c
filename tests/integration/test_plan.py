"""The ahead-of-time planner: chip table, topology names, HLO collectives, and the CLI compiling a
tiny model for a v5e 2x2 slice (needs libtpu: the `tpu` extra) in a subprocess, so libtpu's
compile-only devices never meet this process's fake CPU devices."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from bert_jax.errors import UserError
from bert_jax.planning import chips, hlo_collectives
from bert_jax.planning import planner as plan_lib
from bert_jax.training import sharding
from bert_jax.training.metrics import PEAK_FLOPS_BY_DEVICE_KIND

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_MODEL = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "vocab_size": 30522,
}
TINY_FLAGS = ["--config=configs/demo.py:test"] + [
    f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()
]
PLAN_KEYS = {
    "topology",
    "num_devices",
    "mesh",
    "per_device_memory_bytes",
    "hbm_bytes",
    "fits",
    "flops_per_step",
    "estimated_step_time_s",
    "estimated_mfu",
}
ADAMW_BYTES_PER_PARAM = 4 + 4 + 4  # float32 parameter, first and second moment

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"),
    reason='libtpu not installed: pip install -e ".[tpu]" to run the planner on a TPU topology',
)


def _run_plan(args, tmp_path, preamble=""):
    code = (
        f"{preamble}import sys; from absl import app; from bert_jax import plan; app.run(plan.main)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_LIBRARY_PATH")}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _tiny_param_count() -> int:
    """Parameters of the model the CLI plans: configs/demo.py:test with TINY_MODEL."""
    from bert_jax.pretraining.step import build_pretrainer

    spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / "configs" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = demo.get_config("test")
    config.model.update(TINY_MODEL)
    config.mesh.data = 1
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    params = build_pretrainer(config, mesh).abstract_state.params
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def test_chip_table_matches_device_kinds_and_metrics():
    assert chips.chip_for_device_kind("TPU v5 lite").name == "v5e"
    assert chips.chip_for_device_kind("TPU v5").name == "v5p"
    assert chips.chip_for_device_kind("TPU v4").name == "v4"
    assert chips.chip_for_device_kind("TPU v6 lite").name == "v6e"
    assert chips.chip_for_device_kind("NVIDIA H100 80GB HBM3").name == "h100"
    assert chips.chip_for_device_kind("cpu") is None
    # The training loop's MFU table and the planner's must agree on every chip they share.
    for kind, flops in PEAK_FLOPS_BY_DEVICE_KIND.items():
        chip = chips.chip_for_device_kind(kind)
        assert chip is not None and chip.peak_flops == flops, kind
    with pytest.raises(UserError, match="unknown chip"):
        chips.chip_by_name("v9x")


def test_topology_names():
    assert plan_lib.topology_name("v5e:4x4") == "v5e:4x4"
    assert plan_lib.topology_name("v5e-16") == "v5e:4x4"
    assert plan_lib.topology_name("v5litepod-16") == "v5e:4x4"
    assert plan_lib.topology_name("v5p-32") == "v5p:2x2x4"
    assert plan_lib.topology_name("v4-32") == "v4:2x2x4"
    with pytest.raises(UserError, match="not understood"):
        plan_lib.topology_name("v5e-17")
    assert plan_lib.parse_layout("4x2x1") == (4, 2, 1)
    with pytest.raises(UserError, match="DATAxFSDPxTENSOR"):
        plan_lib.parse_layout("4x2")


SAMPLE_HLO = """\
%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %ar.1 = f32[1024]{0:T(1024)} all-reduce(%x), channel_id=3, replica_groups=[2,4]<=[8], to_apply=%add
}

%fused_gather (p: bf16[8,64]) -> (bf16[32,64]) {
  %ag.2 = bf16[32,64]{1,0} all-gather(%p), replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %start = (bf16[32,64]) custom-call(%ag.2), custom_call_target="AsyncCollectiveStart"
}

ENTRY %main (x: f32[256,64]) -> f32[1024] {
  %f1 = (bf16[32,64]) fusion(%q), kind=kCustom, calls=%fused_gather
  %f2 = (bf16[32,64]) fusion(%r), kind=kCustom, calls=%fused_gather
  %ar.0 = (f32[256,64]{1,0}, bf16[128]{0}) all-reduce(%x, %y), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, to_apply=%add
  %ag = (f32[8,64]{1,0}, f32[64,64]{1,0}) all-gather-start(%z), replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  %ag.done = f32[64,64]{1,0} all-gather-done(%ag)
  %rs = f32[32]{0} reduce-scatter(%w), replica_groups=[1,8]<=[8], dimensions={0}, to_apply=%add
  %loop = (s32[], f32[1024]) while(%init), condition=%cond, body=%body
}
"""  # noqa: E501


def test_parse_collectives_counts_bytes_groups_and_loop_trips():
    found = hlo_collectives.parse_collectives(SAMPLE_HLO, num_devices=8, loop_trip_count=3)
    by_kind = {(c.kind, c.group_size): c for c in found}
    assert len(found) == 5  # the -done half of the async all-gather is not a second op
    fused = by_kind[("all-gather", 4)]  # inside a fusion (XLA:TPU's async collectives), run twice
    assert (fused.executions, fused.buffer_bytes) == (2, 32 * 64 * 2)
    reduce = [c for c in found if c.kind == "all-reduce" and c.executions == 1][0]
    assert (reduce.group_size, reduce.buffer_bytes) == (4, 256 * 64 * 4 + 128 * 2)
    assert reduce.bytes_per_device == pytest.approx(2 * reduce.buffer_bytes * 3 / 4)
    looped = [c for c in found if c.executions == 3][0]  # inside the while body
    assert (looped.group_size, looped.buffer_bytes) == (4, 4096)
    assert looped.bytes_per_device == pytest.approx(3 * 2 * 4096 * 3 / 4)
    gather = by_kind[("all-gather", 8)]
    assert (gather.group_size, gather.buffer_bytes) == (8, 64 * 64 * 4)  # the result, not operand
    assert by_kind[("reduce-scatter", 8)].bytes_per_device == pytest.approx(32 * 4 * 7)
    rows = hlo_collectives.summarize_collectives(found)
    assert [(r["kind"], r["group_size"], r["ops"]) for r in rows] == [
        ("all-reduce", 4, 4),
        ("all-gather", 4, 2),
        ("all-gather", 8, 1),
        ("reduce-scatter", 8, 1),
    ]


def test_roofline_takes_the_slowest_resource():
    chip = chips.chip_by_name("v5e")
    t = plan_lib.roofline(chip, flops=197e12, hbm_bytes=819e9 / 2, ici_bytes=400e9)
    assert t["compute"] == pytest.approx(1.0)
    assert t["hbm"] == pytest.approx(0.5)
    assert t["collectives"] == pytest.approx(2.0)
    assert t["step"] == pytest.approx(2.0)


def test_without_libtpu_the_cli_says_what_to_install(tmp_path):
    result = _run_plan(
        ["--config=configs/demo.py:test", "--topology=v5e:2x2"],
        tmp_path,
        preamble="import sys; sys.modules['libtpu'] = None; ",  # makes `import libtpu` fail
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert 'pip install -e ".[tpu]"' in lines[0] and "libtpu" in lines[0]
    assert result.stdout == ""


@needs_libtpu
def test_plan_and_sweep_tiny_model_on_v5e_2x2(tmp_path):
    num_params = _tiny_param_count()
    # HBM below a replicated AdamW state: data parallelism cannot fit, FSDP over 4 chips must.
    hbm_gib = ADAMW_BYTES_PER_PARAM * num_params / 2**30
    out = tmp_path / "plan.json"
    result = _run_plan(
        [
            *TINY_FLAGS,
            "--topology=v5e:2x2",
            "--sweep",
            "--sweep_layouts=4x1x1,1x4x1",
            "--sweep_microbatches=2",
            f"--hbm_gib={hbm_gib}",
            f"--out={out}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recommendation: mesh 1x4x1" in result.stdout
    assert "FITS with" in result.stdout and "all-reduce over 4" in result.stdout
    plan = json.loads(out.read_text())
    assert PLAN_KEYS <= set(plan)
    assert plan["topology"] == "v5e:2x2" and plan["num_devices"] == 4
    assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and plan["fits"]
    assert plan["hbm_bytes"] == pytest.approx(hbm_gib * 2**30)
    tried = {tuple(p["mesh"].values()): p for p in plan["sweep"]}
    assert set(tried) == {(4, 1, 1), (1, 4, 1)}
    assert not tried[(4, 1, 1)]["fits"]
    for (_, fsdp, _), p in tried.items():
        memory = p["per_device_memory_bytes"]
        assert p["num_params"] == num_params
        analytic_state = ADAMW_BYTES_PER_PARAM * num_params / fsdp
        # The compiled arguments minus the batch: parameters + optimizer state as laid out in HBM.
        assert memory["state_as_compiled"] == pytest.approx(analytic_state, rel=0.05)
        assert memory["parameters"] + memory["optimizer_state"] == pytest.approx(
            analytic_state, rel=0.05
        )
        assert memory["total"] > memory["state_as_compiled"] + memory["temporaries"] * 0.99
        # The compiler counts every op; the model count only matmuls; 6ND ignores attention.
        assert p["model_flops_per_step"] <= p["flops_per_step"] <= 3 * p["model_flops_per_step"]
        assert 0 < p["estimated_mfu"] < 1 and p["estimated_step_time_s"] > 0
    reduced = {c["kind"]: c for c in tried[(4, 1, 1)]["collectives"]}
    # Data parallelism all-reduces every float32 gradient (a ring sends 2 x 3/4 of it per chip).
    # XLA reduces the tied word embedding's two partial gradients (lookup, MLM decoder)
    # separately, so that table can travel twice.
    once = 2 * 0.75 * 4 * num_params
    embedding = TINY_MODEL["vocab_size"] * TINY_MODEL["hidden_size"]
    sent = reduced["all-reduce"]["bytes_per_device"]
    assert once * 0.99 <= sent <= 2 * 0.75 * 4 * (num_params + embedding) * 1.01


@needs_libtpu
def test_plan_compiles_the_eval_step_on_two_slices(tmp_path):
    """The eval step is compiled and its memory counted in the verdict (here the train
    step fits and an oversized eval batch does not); two v5e 2x2 slices joined by DCN."""
    out = tmp_path / "plan.json"
    result = _run_plan(
        [
            *TINY_FLAGS,
            "--topology=v5e:2x2",
            "--num_slices=2",
            "--config.mesh.data=8",
            "--config.batch_size=16",
            "--config.eval_batch_size=4096",
            "--hbm_gib=0.5",
            f"--out={out}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval step: 4096 rows per step (eval_batch_size)" in result.stdout
    assert "in the eval step (lower --config.eval_batch_size=4096)" in result.stdout
    plan = json.loads(out.read_text())
    assert plan["topology"] == "2 x v5e:2x2" and plan["num_devices"] == 8
    assert plan["margin_bytes"] > 0 > plan["eval_margin_bytes"] and not plan["fits"]
    train, evaluation = plan["per_device_memory_bytes"], plan["eval_per_device_memory_bytes"]
    # The eval step holds [512, P, V] float32 logits per chip; the state stays resident.
    logits = 4096 // 8 * 10 * TINY_MODEL["vocab_size"] * 4
    assert evaluation["temporaries"] >= logits
    assert evaluation["optimizer_state_resident"] == train["optimizer_state"]
    assert evaluation["total"] > train["total"]


_MESHES_ON_TPU = """
import json
import jax
import numpy as np
jax.config.update("jax_platforms", "cpu")
from bert_jax.planning import planner as plan_lib
from bert_jax.training import sharding

result = {}
topology = plan_lib.load_topology("v5e:4x4")  # 16 chips, 4 hosts of 4
mesh_config = sharding.default_mesh_config()
for layout in ((4, 1, 4), (16, 1, 1)):
    mesh_config.data, mesh_config.fsdp, mesh_config.tensor = layout
    mesh = sharding.make_mesh(mesh_config, topology.devices)
    result[str(layout)] = [sharding.batch_share(mesh, p) for p in range(4)]
two = plan_lib.load_topology("v5e:2x2", num_slices=2)
mesh_config.data, mesh_config.fsdp, mesh_config.tensor = 4, 1, 2
grid = sharding.make_mesh(mesh_config, two.devices).devices
result["slices"] = np.vectorize(lambda d: d.slice_index)(grid).tolist()
print(json.dumps(result))
"""


@needs_libtpu
def test_meshes_on_tpu_topologies():
    """On a v5e 4x4 (4 hosts) a tensor axis of 4 spans two hosts, which then feed the
    same half of each batch; two slices get a hybrid mesh with data across the slices."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_LIBRARY_PATH")}
    result = subprocess.run(
        [sys.executable, "-c", _MESHES_ON_TPU],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["(4, 1, 4)"] == [[0, 2], [0, 2], [1, 2], [1, 2]]
    assert sorted(map(tuple, found["(16, 1, 1)"])) == [(i, 4) for i in range(4)]
    slices = np.asarray(found["slices"])  # [data=4, fsdp=1, tensor=2]
    assert (slices[:2] == 0).all() and (slices[2:] == 1).all()


STEP_BYTES = REPO_ROOT / "tests" / "data" / "step_bytes.json"
STEP_BYTES_TOLERANCE = 0.03
# The shipped BERT-base recipe (bfloat16, dropout 0.1, 30522 words, sequence 128) at hidden 128
# and 2 layers, 8 rows per chip on a v5e 2x2: tests/unit/test_step_bytes.py guards its CPU twin.
SMALL_BERT_FLAGS = [
    "--config=configs/bert_base.py:phase1",
    "--config.model.hidden_size=128",
    "--config.model.intermediate_size=512",
    "--config.model.num_attention_heads=2",
    "--config.model.num_hidden_layers=2",
    "--config.batch_size=32",
    "--topology=v5e:2x2",
    "--breakdown",
]


def _tpu_step_bytes(tmp_path) -> tuple[dict, str]:
    out = tmp_path / "plan.json"
    result = _run_plan([*SMALL_BERT_FLAGS, f"--out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())["breakdown"], result.stdout


@needs_libtpu
def test_tpu_step_bytes_per_token_as_recorded(tmp_path):
    """The compiled TPU step's bytes per token (the compiler's and the HBM-only count) stay
    within a few percent of the recorded figures; re-record on purpose with
    `.venv-tpu/bin/python tests/integration/test_plan.py` and say why in docs/scaling.md."""
    recorded = json.loads(STEP_BYTES.read_text())
    found, stdout = _tpu_step_bytes(tmp_path)
    assert "where the bytes go" in stdout and "top 15 instructions" in stdout
    for key in ("compiler_bytes_per_token", "hbm_bytes_per_token"):
        measured, expected = found[key], recorded[f"v5e_2x2_{key}"]
        assert abs(measured / expected - 1) <= STEP_BYTES_TOLERANCE, (
            f"{key}: {measured:,.0f} measured, {expected:,.0f} recorded; if on purpose, re-record"
        )
    groups = found["groups"]
    assert set(groups) >= {"attention", "MLP", "optimizer", "gradient reduction"}
    # The groups add up to the whole; the matmuls' FLOPs are the model's (2 layers + the decoder).
    assert sum(g["hbm_bytes"] for g in groups.values()) / (8 * 128) == pytest.approx(
        found["hbm_bytes_per_token"]
    )
    # Attention's FLOPs include those of the Pallas kernel (model/tpu_attention.py), which are
    # its cost estimate: the projections' 4 x 6 x tokens x H^2 and, at the least, autodiff's
    # 12 x rows x heads x T^2 x head dim, per layer.
    rows, t, h, heads = 8, 128, 128, 2
    core = 2 * (24 * rows * t * h * h + 12 * rows * heads * t * t * (h // heads))
    assert groups["attention"]["flops"] >= core


if __name__ == "__main__":  # re-record with .venv-tpu/bin/python (only on purpose)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        found, _ = _tpu_step_bytes(pathlib.Path(tmp))
    data = json.loads(STEP_BYTES.read_text())
    for key in ("compiler_bytes_per_token", "hbm_bytes_per_token"):
        data[f"v5e_2x2_{key}"] = round(found[key])
    STEP_BYTES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
