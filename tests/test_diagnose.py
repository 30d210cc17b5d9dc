"""A runtime that rejects the model: the operator, and where the model uses it."""
import pytest

import backendiff
from backendiff.diagnose import op_name, parse_rejection

from .conftest import needs


@pytest.mark.parametrize("message, frames, ops, node", [
    ("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Col2Im(18) node with name "
     "'node_Col2Im_3'", [], ["Col2Im"], "node_Col2Im_3"),
    ("OpConversionFailure: No conversion rule found for operations: aten::frobnicate.default, aten::foo",
     [], ["aten::frobnicate.default", "aten::foo"], None),
    ("Check failed: strides.size() == 2 (0 vs. 2)", ["from_exported_program", "_max_pool2d_impl"], ["max_pool2d"], None),
    ("something else entirely", [], [], None),
])
def test_parse_rejection(message, frames, ops, node):
    assert parse_rejection(message, frames) == (ops, node)


def test_op_names_are_normalised():
    assert {op_name(t) for t in ("aten::max_pool2d", "aten.max_pool2d.default", "max_pool2d.default")} == {"max_pool2d"}


@needs("tvm")
def test_tvm_rejection_names_the_operator_and_the_source_line():
    """TVM's ExportedProgram importer rejects max_pool2d called without a stride (PyTorch's
    default): the report names the operator, the module and the line of the user's code."""
    b = backendiff.compare("zoo:mini-pose", backends=["tvm"]).backend("tvm")
    assert b.status == "failed" and b.error["stage"] == "convert" and b.error["operator"] == "max_pool2d"
    (where,) = b.error["where"]
    assert where["module"] == "<top>" and where["op"] == "max_pool2d" and where["source"].endswith("models/nets.py:44")
