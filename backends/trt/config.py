"""How a spec configures the TensorRT builder: the variants and their precision flags
(TF32 off unless asked), the strongly typed network flag, optimization level, workspace
limit, and ``keep=MODULE;MODULE`` (the layers made from those PyTorch modules' ONNX nodes
constrained to fp32, with the flag that makes per-layer precisions binding). Also the
spec's validation of these options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backendiff.errors import BackendUnavailable, BadInput
from backendiff.specs import BackendSpec

from .layers import OnnxIndex, constraint_plan, onnx_index
from .probe import variant_unavailable_reason
from .tensors import dtype_name

VARIANTS = ("fp32", "tf32", "fp16", "bf16", "int8", "strongly_typed")
OPT_LEVELS = tuple(str(i) for i in range(6))
KEEP_VARIANTS = ("fp16", "bf16", "int8")

# variant -> trt.BuilderFlag members to set
_SET_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "tf32": ("TF32",), "fp16": ("FP16",), "bf16": ("BF16",),
                                          "int8": ("INT8",), "strongly_typed": ()}
_CONSTRAINTS = {"obey": "OBEY_PRECISION_CONSTRAINTS", "prefer": "PREFER_PRECISION_CONSTRAINTS"}
#: the ``precision_constraints`` option's values
CONSTRAINT_MODES = tuple(_CONSTRAINTS)


def variant_of(spec: BackendSpec) -> str:
    """The spec's variant (``Adapter.variant``: the first variant when none is named)."""
    return spec.variant or VARIANTS[0]


def builder_flags(variant: str) -> list[str]:
    """Names of the ``trt.BuilderFlag`` members to set for a variant."""
    if variant not in _SET_FLAGS:
        raise ValueError(f"unknown TensorRT variant {variant!r}")
    return list(_SET_FLAGS[variant])


def cleared_flags(variant: str) -> list[str]:
    """Names of the ``trt.BuilderFlag`` members to clear (TF32 is on by default)."""
    return [] if "TF32" in builder_flags(variant) else ["TF32"]


def constraint_flag(mode: str) -> str:
    """The ``trt.BuilderFlag`` member that makes the builder honour per-layer precisions."""
    if mode not in _CONSTRAINTS:
        raise ValueError(f"unknown precision_constraints mode {mode!r}")
    return _CONSTRAINTS[mode]


def network_flags(trt: Any, variant: str) -> int:
    """The flags for ``builder.create_network``: STRONGLY_TYPED for that variant, else none."""
    if variant != "strongly_typed":
        return 0
    member = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if member is None:
        raise BackendUnavailable(*variant_unavailable_reason("strongly_typed", str(getattr(trt, "__version__", "?")),
                                                             strongly_typed=False, int8_calibrator=True,
                                                             capability=None))
    return 1 << int(member)


def parse_workspace_mb(text: str) -> int:
    """The ``workspace_mb`` option as a positive number of MiB."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise BadInput(f"bad value {text!r} for option 'workspace_mb' of 'trt': expected a positive integer (MiB)")
    return value


def apply_config(trt: Any, config: Any, variant: str, opt_level: int | None = None,
                 workspace_mb: int | None = None, constraints: str | None = None) -> None:
    """Set precision flags, optimization level, workspace limit and (``constraints``: "obey"
    or "prefer") the flag that makes per-layer precisions binding, on an IBuilderConfig."""
    for name in builder_flags(variant):
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in cleared_flags(variant):
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if constraints is not None:
        config.set_flag(getattr(trt.BuilderFlag, constraint_flag(constraints)))


def configure(trt: Any, config: Any, spec: BackendSpec) -> None:
    """``apply_config`` with the spec's variant and options (precision constraints with keep= only)."""
    workspace = spec.option("workspace_mb")
    keep = keep_modules(spec)
    apply_config(trt, config, variant_of(spec), int(spec.option("opt_level", "3")),
                 parse_workspace_mb(workspace) if workspace is not None else None,
                 (spec.option("precision_constraints") or "obey") if keep else None)


def check_options(spec: BackendSpec) -> None:
    """BadInput for option values and combinations a canonical trt spec cannot have."""
    workspace = spec.option("workspace_mb")
    if workspace is not None:
        parse_workspace_mb(workspace)
    if spec.option("keep") is not None:
        if spec.variant not in KEEP_VARIANTS:
            raise BadInput("trt's keep= applies to trt:fp16, trt:bf16 and trt:int8 (the layers of those modules "
                           "are constrained to fp32), e.g. trt:fp16,keep=features.0")
        if not keep_modules(spec):
            raise BadInput("trt's keep= needs module paths separated by ';', e.g. keep=features.0;classifier")
    if spec.option("precision_constraints") is not None and spec.option("keep") is None:
        raise BadInput("trt's precision_constraints= applies with keep= (it says how binding the fp32 "
                       "constraints on the kept modules are)")


# -- keep= ------------------------------------------------------------------------------------
def keep_modules(spec: BackendSpec) -> list[str]:
    from backendiff.onnx_graph import parse_keep

    return parse_keep(spec.option("keep"))


def check_keep(onnx_path: Path, keep: list[str]) -> dict[str, int]:
    """ONNX nodes of the export per ``keep`` module; BadInput when one owns none (a typo, say)."""
    import onnx

    from backendiff.onnx_graph import check_keep as check

    return check(onnx.load(str(onnx_path), load_external_data=False), keep)


def apply_keep(trt: Any, network: Any, keep_nodes, index: OnnxIndex) -> list[str]:
    """Constrain every layer of the parsed network made from a kept ONNX node to fp32 (its
    precision and its floating outputs' types). Returns the names of the layers constrained."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    described = [(layer.name, getattr(layer, "metadata", None),
                  [dtype_name(layer.get_output(j).dtype) for j in range(layer.num_outputs)]) for layer in layers]
    done = []
    for i, outputs in constraint_plan(described, keep_nodes, index):
        layer = layers[i]
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        done.append(layer.name)
    return done


def constrain(trt: Any, network: Any, onnx_path: Path, keep: list[str]) -> None:
    """``apply_keep`` for the ``keep`` modules' ONNX nodes; an error when no layer matched."""
    import onnx

    from backendiff.onnx_graph import nodes_in_modules

    model = onnx.load(str(onnx_path), load_external_data=False)
    done = apply_keep(trt, network, nodes_in_modules(model, keep), onnx_index(model))
    if not done:
        raise RuntimeError(f"keep={';'.join(keep)}: no layer of the parsed network comes from those modules' "
                           "ONNX nodes (names and metadata did not match)")
