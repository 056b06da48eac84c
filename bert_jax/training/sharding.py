"""Device mesh from the config, logical-axis rules, and shardings for parameters and batches.

The model names only logical axes; `config.logical_axis_rules` maps them to the mesh axes
(data, fsdp, tensor). The mesh follows the physical topology, hybrid over DCN across TPU slices;
each process feeds the rows of the global batch its devices hold (`batch_share`).
See docs/design/multihost_and_sharding.md.
"""

from __future__ import annotations

import collections
import functools
import math
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax.core import meta
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bert_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical axis, mesh axes). Parameters: vocab/embed/heads/mlp/...; activations: act_*.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("length", None),
    ("type_vocab", None),
    ("classes", None),
)


# Logical axis -> the model config key whose size it is (for error messages).
_AXIS_SIZES = {
    "vocab": "vocab_size",
    "embed": "hidden_size",
    "embed_out": "hidden_size",
    "heads": "num_attention_heads",
    "mlp": "intermediate_size",
}


def default_mesh_config() -> ml_collections.ConfigDict:
    """The `mesh` keys of pretraining and fine-tuning configs."""
    return ml_collections.ConfigDict(
        dict(
            data=-1,  # sizes over all devices (all slices); one may be -1: the rest
            fsdp=1,
            tensor=1,
            # Multi-slice jobs: how many slices the data and fsdp axes span over DCN. dcn_data -1:
            # the slices not used by dcn_fsdp. Ignored (1) on a single slice.
            dcn_data=-1,
            dcn_fsdp=1,
            # True: when the topology cannot be laid out as the mesh, put devices in id order
            # (collectives then cross slow links) instead of stopping with an error.
            reshape_fallback=False,
        )
    )


def resolve_mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """mesh_config has data/fsdp/tensor sizes; one of them may be -1 (all remaining devices)."""
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    described = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes, strict=True))
    if sizes.count(-1) > 1:
        raise UserError(f"mesh ({described}): at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh ({described}): sizes must be positive or -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise UserError(
                f"mesh ({described}) does not divide the {num_devices} devices; "
                f"set the axis sizes so that their product is {num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"mesh ({described}) needs {math.prod(sizes)} devices but {num_devices} are "
            f"available; set --config.mesh.* so that data*fsdp*tensor = {num_devices} "
            "(or use -1 for one axis)"
        )
    return tuple(sizes)


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
    """{'data': d, 'fsdp': f, 'tensor': t} of resolve_mesh_shape."""
    return dict(zip(MESH_AXES, resolve_mesh_shape(mesh_config, num_devices), strict=True))


def _described(mesh_config, shape) -> str:
    return ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape, strict=True))


def num_slices(devices: Sequence) -> int:
    """Distinct `slice_index` values among devices (1 where devices carry none: CPU, GPU)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def dcn_mesh_shape(mesh_config, shape: Sequence[int], slices: int) -> tuple[int, int, int]:
    """How many slices each mesh axis spans over DCN (product = slices); tensor never does."""
    if slices == 1:
        return (1, 1, 1)
    dcn_fsdp = int(mesh_config.get("dcn_fsdp", 1))
    dcn_data = int(mesh_config.get("dcn_data", -1))
    if dcn_fsdp < 1 or slices % dcn_fsdp:
        raise UserError(f"mesh.dcn_fsdp {dcn_fsdp} does not divide the {slices} slices")
    if dcn_data == -1:
        dcn_data = slices // dcn_fsdp
    if dcn_data * dcn_fsdp != slices:
        raise UserError(
            f"mesh.dcn_data {dcn_data} x mesh.dcn_fsdp {dcn_fsdp} must equal the {slices} slices "
            "the devices belong to (dcn_data=-1 takes the rest)"
        )
    for axis, size, dcn in (("data", shape[0], dcn_data), ("fsdp", shape[1], dcn_fsdp)):
        if size % dcn:
            raise UserError(
                f"mesh.{axis} {size} is not a multiple of mesh.dcn_{axis} {dcn}: across {slices} "
                f"slices each slice holds mesh.{axis} / mesh.dcn_{axis} of that axis"
            )
    return (dcn_data, dcn_fsdp, 1)


def device_grid(mesh_config, devices: Sequence) -> np.ndarray:
    """The devices as a (data, fsdp, tensor) array laid out on the physical topology."""
    from jax.experimental import mesh_utils

    devices = list(devices)
    shape = resolve_mesh_shape(mesh_config, len(devices))
    slices = num_slices(devices)
    dcn = dcn_mesh_shape(mesh_config, shape, slices)
    try:
        if slices > 1:
            ici = tuple(s // d for s, d in zip(shape, dcn, strict=True))
            return mesh_utils.create_hybrid_device_mesh(
                ici, dcn, devices, allow_split_physical_axes=True
            )
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        where = f"{len(devices)} {devices[0].platform} devices" + (
            f" in {slices} slices" if slices > 1 else ""
        )
        if not mesh_config.get("reshape_fallback", False):
            raise UserError(
                f"mesh ({_described(mesh_config, shape)}) cannot be laid out on the topology of "
                f"the {where} ({reason}); choose axis sizes that fit it (python -m bert_jax.plan "
                "--sweep lists some) or set --config.mesh.reshape_fallback=True to place devices "
                "in id order (slower collectives)"
            ) from err
        if jax.process_index() == 0:
            print(
                f"WARNING: mesh ({_described(mesh_config, shape)}) does not fit the topology of "
                f"the {where} ({reason}); mesh.reshape_fallback=True: devices are placed in id "
                "order, ignoring the topology, so collectives may cross slow links",
                file=sys.stderr,
                flush=True,
            )
        return np.asarray(sorted(devices, key=lambda d: d.id)).reshape(shape)


def make_mesh(mesh_config, devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (Linen-style sharding propagation)."""
    grid = device_grid(mesh_config, jax.devices() if devices is None else devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(config) -> tuple:
    rules = config.get("logical_axis_rules", None) if hasattr(config, "get") else None
    if not rules:
        return DEFAULT_RULES
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules) -> object:
    """Boxed (nn.Partitioned) abstract tree -> matching tree of NamedShardings for its values."""
    specs = nn.get_partition_spec(abstract_boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def sharded_abstract(init_boxed, mesh: Mesh, rules):
    """Shapes and shardings of what `init_boxed(rng)` returns, without computing it.

    init_boxed returns a tree with nn.Partitioned leaves (logical axis names), e.g. a model's
    parameters or a train state whose optimizer moments inherit them. Returns
    (abstract, shardings): ShapeDtypeStructs that carry their NamedSharding, and the
    NamedShardings alone (for jit's in/out_shardings), both unboxed.
    """
    with nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init_boxed, jax.random.key(0))
        shardings = logical_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        meta.unbox(boxed),
        shardings,
    )
    check_divisible(boxed, abstract)
    return abstract, shardings


def check_divisible(boxed, abstract) -> None:
    """UserError (one line) when a mesh axis does not divide the array dimension it splits.

    boxed: the nn.Partitioned tree (logical names); abstract: its ShapeDtypeStructs with
    NamedShardings. jit would otherwise stop with an XLA message naming neither the config key
    nor the mesh axis.
    """
    names = jax.tree.leaves(
        nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
    for (path, leaf), logical in zip(leaves, names, strict=True):
        spec, mesh_shape = leaf.sharding.spec, leaf.sharding.mesh.shape
        for dim, size in enumerate(leaf.shape):
            axes = spec[dim] if dim < len(spec) and spec[dim] is not None else ()
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(mesh_shape[a] for a in axes)
            if size % ways == 0:
                continue
            name = logical[dim] if dim < len(logical) else None
            what = f"model.{_AXIS_SIZES[name]}" if name in _AXIS_SIZES else f"axis {name!r}"
            mesh_axes = " x ".join(f"mesh.{a} {mesh_shape[a]}" for a in axes)
            parameter = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            raise UserError(
                f"{mesh_axes} does not divide {what} {size} (dimension {dim} of {parameter}); "
                "choose mesh sizes that divide it"
            )


@functools.lru_cache(maxsize=32)
def _batch_groups(mesh: Mesh) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(process, batch shards it holds) for every process, shards counted over data x fsdp."""
    shards = data_parallel_size(mesh)
    indices = batch_sharding(mesh, 1).devices_indices_map((shards,))
    held = collections.defaultdict(set)
    for device, (rows,) in indices.items():
        held[device.process_index].update(range(*rows.indices(shards)))
    return tuple((process, tuple(sorted(rows))) for process, rows in sorted(held.items()))


def batch_share(mesh: Mesh, process_index: int | None = None) -> tuple[int, int]:
    """(index, count): this process feeds share `index` of `count` equal shares of each batch.

    Processes whose devices hold the same rows (a tensor axis across hosts) get the same share
    and must feed identical rows; the data pipeline takes `index, count` in place of the process
    index and count. UserError when the processes' rows overlap only in part.
    """
    process = jax.process_index() if process_index is None else process_index
    groups = _batch_groups(mesh)
    distinct = sorted({rows for _, rows in groups})
    covered = [row for rows in distinct for row in rows]
    if len(covered) != len(set(covered)) or len({len(rows) for rows in distinct}) != 1:
        layout = "; ".join(f"process {p}: shards {list(rows)}" for p, rows in groups)
        raise UserError(
            f"the mesh {dict(mesh.shape)} gives processes overlapping, unequal parts of the batch "
            f"({layout}); choose mesh sizes so that each host holds whole data-parallel shards"
        )
    mine = dict(groups)[process]
    return distinct.index(mine), len(distinct)


def batch_rows(mesh: Mesh, global_batch: int, process_index: int | None = None) -> np.ndarray:
    """Global row indices of the rows a process feeds, in the order of its local batch (what
    `jax.make_array_from_process_local_data` does with them): e.g. to map outputs to examples."""
    process = jax.process_index() if process_index is None else process_index
    shards = data_parallel_size(mesh)
    per_shard = global_batch // shards
    held = dict(_batch_groups(mesh))[process]
    return np.concatenate([np.arange(s * per_shard, (s + 1) * per_shard) for s in held])


def global_batch_from_local(local_batch: dict, mesh: Mesh) -> dict:
    """Each process's rows (its `batch_share`) -> one global jax.Array per key, sharded over the
    batch axes."""
    _, shares = batch_share(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * shares, *value.shape[1:])
        sharding = batch_sharding(mesh, value.ndim)
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
