"""The planner's per-instruction bytes and FLOPs read from optimized HLO text (what
`python -m bert_jax.plan --breakdown` prints), on a hand-written module shaped as XLA:TPU
prints one: fusions, async copies into VMEM (S(1)), slices, a loop with a known trip count."""

import pytest

from bert_jax.planning import breakdown, hlo_costs

HLO = """\
HloModule jit_train_step

%fused_dot (p0: bf16[64,128], p1: bf16[128,256]) -> f32[64,256] {
  %p0 = bf16[64,128]{1,0} parameter(0)
  %p1 = bf16[128,256]{1,0} parameter(1)
  ROOT %d = f32[64,256]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_bmm (q: bf16[4,8,2,16], k: bf16[4,8,2,16]) -> f32[4,2,8,8] {
  %q = bf16[4,8,2,16]{3,2,1,0} parameter(0)
  %k = bf16[4,8,2,16]{3,2,1,0} parameter(1)
  ROOT %c = f32[4,2,8,8]{3,2,1,0} convolution(%q, %k), window={size=4x2 stride=3x1 lhs_dilate=4x2}, dim_labels=0b1f_0o1i->01bf
}

%body (s: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %s = (s32[], f32[1024]{0}) parameter(0)
  %x = f32[1024]{0} get-tuple-element(%s), index=1
  %y = f32[1024]{0} multiply(%x, %x), metadata={op_name="jit(train_step)/jvp(BertForPreTraining)/bert/encoder/layer_0/intermediate/dense/mul"}
  ROOT %t = (s32[], f32[1024]{0}) tuple(%i, %y)
}

ENTRY %main (a: bf16[64,128], b: bf16[128,256], w: f32[1000,64], q: bf16[4,8,2,16]) -> f32[64,256] {
  %a = bf16[64,128]{1,0} parameter(0)
  %b = bf16[128,256]{1,0} parameter(1)
  %w = f32[1000,64]{1,0:T(8,128)} parameter(2)
  %q = bf16[4,8,2,16]{3,2,1,0} parameter(3)
  %f = f32[64,256]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_dot, metadata={op_name="jit(train_step)/jvp(BertForPreTraining)/bert/encoder/layer_0/attention/query/dense/dot_general"}
  %g = f32[4,2,8,8]{3,2,1,0:S(1)} fusion(%q, %q), kind=kOutput, calls=%fused_bmm, metadata={op_name="jit(train_step)/transpose(jvp(BertForPreTraining))/bert/encoder/layer_0/attention/dot_general"}
  %cs = (f32[1000,64]{1,0:S(1)}, f32[1000,64]{1,0}, u32[]{:S(2)}) copy-start(%w)
  %cd = f32[1000,64]{1,0:S(1)} copy-done(%cs)
  %ss = ((f32[1000,64]{1,0}), f32[250,64]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%w), slice={[0:250], [0:64]}
  %sd = f32[250,64]{1,0:S(1)} slice-done(%ss)
  %u = f32[1000,64]{1,0} add(%cd, %cd), metadata={op_name="jit(train_step)/add"}
  %loop = (s32[], f32[1024]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %ar = f32[1000,64]{1,0} all-reduce(%u), replica_groups={{0,1}}, to_apply=%add
  ROOT %r = f32[64,256]{1,0} copy(%f)
}
"""  # noqa: E501


def test_instruction_costs_bytes_flops_and_memory_spaces():
    costs = {c.name: c for c in hlo_costs.instruction_costs(HLO)}
    # Parameters, GTEs, tuples and the -done halves move nothing of their own.
    assert set(costs) == {"f", "g", "cs", "ss", "u", "y", "ar", "r"}
    f = costs["f"]  # operands + output, 2 x M x N x K
    assert f.hbm_bytes == 64 * 128 * 2 + 128 * 256 * 2 + 64 * 256 * 4
    assert f.flops == 2 * 64 * 256 * 128 and f.group == "attention"
    g = costs["g"]  # a batched dot written as a window with lhs_dilate = size: one tap per window
    assert g.flops == 2 * (4 * 2 * 8 * 8) * 16
    assert g.vmem_bytes == 4 * 2 * 8 * 8 * 4 and g.hbm_bytes == 2 * 4 * 8 * 2 * 16 * 2
    # The copy reads its operand from HBM and writes VMEM: counted once each, not the tuple twice.
    table = 1000 * 64 * 4
    assert (costs["cs"].hbm_bytes, costs["cs"].vmem_bytes) == (table, table)
    # A slice reads only the rows it writes.
    assert (costs["ss"].hbm_bytes, costs["ss"].vmem_bytes) == (250 * 64 * 4, 250 * 64 * 4)
    assert (costs["u"].hbm_bytes, costs["u"].vmem_bytes) == (table, 2 * table)
    assert costs["u"].group == "optimizer" and costs["ar"].group == "gradient reduction"
    loop = costs["y"]  # inside the while body: three executions
    assert loop.executions == 3 and loop.hbm_bytes == 3 * 1024 * 4 and loop.group == "MLP"
    groups = hlo_costs.by_group(list(costs.values()))
    assert groups["MLP"]["hbm_bytes"] == 3 * 3 * 1024 * 4 and groups["MLP"]["ops"] == 3


def test_groups_follow_name_scopes():
    fwd = "jit(train_step)/jvp(BertForPreTraining)/bert/encoder/layer_3/"
    assert hlo_costs.group_of("fusion", fwd + "attention_layer_norm/norm/mul") == "LayerNorm"
    assert hlo_costs.group_of("fusion", fwd + "output/dense/dot_general") == "MLP"
    assert hlo_costs.group_of("fusion", fwd + "attention/output/dense/add") == "attention"
    emb = "jit(train_step)/transpose(jvp(BertForPreTraining))/bert/embeddings/word_embeddings/x"
    assert hlo_costs.group_of("fusion", emb) == "embedding"
    assert hlo_costs.group_of("all-reduce-start", emb) == "gradient reduction"
    assert hlo_costs.group_of("fusion", "jit(train_step)/jvp(BertForPreTraining)/cls/x") == (
        "loss and heads"
    )
    assert hlo_costs.group_of("fusion", "jit(train_step)/jvp(BertForPreTraining)/loss/max") == (
        "loss and heads"
    )
    assert hlo_costs.group_of("fusion", fwd + "erf") == "layer glue"
    assert hlo_costs.group_of("fusion", "jit(train_step)/optimizer/sqrt") == "optimizer"
    assert hlo_costs.group_of("copy-start", "") == "unnamed"


def test_analytic_floor_counts_each_tensor_once_per_pass():
    shape = breakdown.StepShape(rows=16, seq_len=128, predictions=20, hidden=768,
                                intermediate=3072, layers=12, vocab=30592,
                                state_params=110e6)  # fmt: skip
    floor = breakdown.analytic_floor(shape)
    tokens = 16 * 128
    # AdamW on float32 state: read p, m, v, g and write p, m, v, 4 bytes each.
    assert floor["optimizer"] == pytest.approx(28 * 110e6)
    weight = 4 + 2 + 2 * 2 + 4
    assert floor["MLP"] == pytest.approx(
        4 * 2 * (2 * 768 + 2 * 3072) * tokens * 12 + 12 * 2 * 768 * 3072 * weight
    )
    assert set(floor) == set(breakdown.GROUPS)


def test_concat_bitcast_moves_nothing():
    text = HLO.replace(
        "  %ar = ",
        '  %cc = f32[500,64]{1,0:S(1)} custom-call(%sd, %sd), custom_call_target="ConcatBitcast"\n'
        "  %ar = ",
    )
    names = {c.name for c in hlo_costs.instruction_costs(text)}
    assert "cc" not in names and "ss" in names


PALLAS = """\
HloModule jit_train_step

ENTRY %main (q: bf16[4,16,512,64], s: s32[4]) -> (bf16[4,16,512,64], f32[4,16,1,512]) {
  %s = s32[4]{0} parameter(1)
  %q = bf16[4,16,512,64]{3,2,1,0} parameter(0)
  %k = bf16[4,16,512,64]{3,2,1,0:S(1)} copy(%q)
  ROOT %bert_flash_forward.1 = (bf16[4,16,512,64]{3,2,1,0}, f32[4,16,1,512]{3,2,1,0}) custom-call(%s, %q, %k, %q), custom_call_target="tpu_custom_call", metadata={op_name="jit(train_step)/jvp(BertForPreTraining)/bert/encoder/layer_0/attention/shard_map/bert_flash_forward/pallas_call"}, backend_config={"flag_configs":[],"custom_call_config":{"body":"TUxJUh4=","cost_estimate":{"flops":"4294967296","transcendentals":"16777216","bytes_accessed":"17170432","remote_bytes_transferred":"0"},"needs_layout_passes":true}}
}
"""  # noqa: E501


def test_pallas_kernels_cost_their_estimate():
    """A Pallas kernel's custom call costs the pl.CostEstimate in its backend_config (its
    operands and outputs would say 33.6 MB and no FLOPs), split between HBM and VMEM as its
    operands and outputs lie (here k, a quarter of them by bytes less the lse, in VMEM)."""
    cost = {c.name: c for c in hlo_costs.instruction_costs(PALLAS)}["bert_flash_forward.1"]
    tensor, lse = 4 * 16 * 512 * 64 * 2, 4 * 16 * 512 * 4
    in_vmem = tensor / (16 + 4 * tensor + lse)
    assert cost.flops == 4294967296 and cost.group == "attention"
    assert cost.hbm_bytes + cost.vmem_bytes == pytest.approx(17170432)
    assert cost.vmem_bytes == pytest.approx(17170432 * in_vmem)
