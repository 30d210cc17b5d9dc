"""Small edits of ONNX graphs shared by the adapters."""
from __future__ import annotations

FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def mark_outputs(model, names) -> list[str]:
    """Append the named values (floating point, with a known type in ``value_info``) to the
    graph outputs, in place, with the type the graph gives them (fp16 in an fp16 graph: the
    runtime must then produce real fp16 values for them). Returns the names marked."""
    wanted = set(names)
    existing = {o.name for o in model.graph.output}
    marked = []
    for vi in model.graph.value_info:
        if vi.name in wanted and vi.name not in existing and vi.type.tensor_type.elem_type in FLOAT_TYPES:
            model.graph.output.append(vi)
            marked.append(vi.name)
    return marked
