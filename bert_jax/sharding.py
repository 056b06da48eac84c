"""Device mesh from the config, logical-axis rules, and shardings for parameters and batches.

The model names only logical axes; `config.logical_axis_rules` maps them to the mesh axes
(data, fsdp, tensor). Data parallelism splits the batch over data x fsdp; FSDP additionally
splits parameters and optimizer state over fsdp; tensor parallelism splits heads, mlp and vocab.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
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


def make_mesh(mesh_config, devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (Linen-style sharding propagation)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_config, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices).reshape(shape)
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
    return abstract, shardings


def batch_rows(mesh: Mesh, global_batch: int, process_index: int | None = None) -> np.ndarray:
    """Global row indices of the rows a process feeds, in the order of its local batch (what
    `jax.make_array_from_process_local_data` does with them). They need not be one block: a
    mesh orders devices by topology, so one host's devices can sit apart along the batch axes
    (e.g. p0d0, p1d0, p0d1, p1d1); fine-tuning builds exactly these rows of each batch."""
    process = jax.process_index() if process_index is None else process_index
    indices = batch_sharding(mesh, 1).devices_indices_map((global_batch,))
    rows = set()
    for device, (index,) in indices.items():
        if device.process_index == process:
            rows.update(range(*index.indices(global_batch)))
    return np.array(sorted(rows), np.int64)


def global_batch_from_local(local_batch: dict, mesh: Mesh) -> dict:
    """Each process's rows -> one global jax.Array per key, sharded over the batch axes."""
    process_count = jax.process_count()
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * process_count, *value.shape[1:])
        sharding = batch_sharding(mesh, value.ndim)
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
