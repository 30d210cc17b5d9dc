"""TensorRT engine layer names -> ONNX nodes -> PyTorch modules, on recorded name lists.

The ONNX graph below is the dynamo export (torch 2.13, optimize=True) of a small ResNet-style
net, recorded node by node: names, ops, values, the FX node and the module path the exporter
wrote. Layer name lists come from engines of that shape (dynamo names) and from the lists
users posted in TensorRT's issue tracker (ONNX model zoo, tf2onnx and TorchScript-exporter
names), with the fusions, point-wise kernels, Myelin regions and reformats TensorRT writes.
"""
from __future__ import annotations

import json

import pytest
from onnx import TensorProto, helper

from backendiff.backends.trt import layers as L

# (node name, op, inputs, outputs, FX node, module path) of the recorded dynamo export
RECORDED = [
    ("node_conv2d", "Conv", ["x", "stem.0.weight", "stem.0.bias"], ["conv2d"], "conv2d", "stem.0"),
    ("node_relu", "Relu", ["conv2d"], ["relu"], "relu", "stem.1"),
    ("node_Conv_15", "Conv", ["relu", "layer1.conv1.weight", "layer1.conv1.bias"], ["getitem"],
     "_native_batch_norm_legit_no_training", "layer1.bn1"),
    ("node_relu_1", "Relu", ["getitem"], ["relu_1"], "relu_1", "layer1"),
    ("node_conv2d_2", "Conv", ["relu_1", "layer1.conv2.weight", "layer1.conv2.bias"], ["conv2d_2"], "conv2d_2",
     "layer1.conv2"),
    ("node_add", "Add", ["conv2d_2", "relu"], ["add"], "add", "layer1"),
    ("node_relu_2", "Relu", ["add"], ["relu_2"], "relu_2", "layer1"),
    ("node_mean", "ReduceMean", ["relu_2", "val_10"], ["mean"], "mean", "pool"),
    ("node_view", "Reshape", ["mean", "val_14"], ["view"], "view", ""),
    ("node_linear", "Gemm", ["view", "fc.weight", "fc.bias"], ["linear"], "linear", "fc"),
    ("node_softmax", "Softmax", ["linear"], ["softmax"], "softmax", ""),
]
INITIALIZERS = ["stem.0.weight", "stem.0.bias", "layer1.conv1.weight", "layer1.conv1.bias", "layer1.conv2.weight",
                "layer1.conv2.bias", "fc.weight", "fc.bias", "val_10", "val_14"]


def graph(nodes, initializers=(), fx=True):
    """An ONNX model with these nodes, carrying the dynamo exporter's metadata."""
    made = []
    for name, op, ins, outs, fx_node, module in nodes:
        node = helper.make_node(op, ins, outs, name=name)
        if fx:
            scopes = [""] + ([module] if module else []) + [fx_node]
            for key, value in (("pkg.torch.onnx.fx_node", f"%{fx_node} : [num_users=1] = call_function[...]"),
                               ("pkg.torch.onnx.name_scopes", repr(scopes))):
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value
        made.append(node)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [1], [0.0]) for n in initializers]
    return helper.make_model(helper.make_graph(made, "g", [], [], initializer=inits))


@pytest.fixture(scope="module")
def index():
    fx_names = [n[4] for n in RECORDED if not n[4].startswith("_")] + ["getitem"]
    return L.onnx_index(graph(RECORDED, INITIALIZERS), fx_names)


# -- splitting names --------------------------------------------------------------------
def test_split_top_respects_brackets():
    assert L.split_top("a + (Unnamed Layer* 3) [Shuffle] + PWN(b + c, d)", " + ") == \
        ["a", "(Unnamed Layer* 3) [Shuffle]", "PWN(b + c, d)"]
    assert L.split_top("x", " + ") == ["x"]


@pytest.mark.parametrize("name,kind,parts,ranges", [
    ("node_conv2d", "layer", ("node_conv2d",), ()),
    ("node_conv2d + node_relu", "fused", ("node_conv2d", "node_relu"), ()),
    ("PWN(PWN(node_add), node_relu_2)", "pointwise", ("node_add", "node_relu_2"), ()),
    ("node_conv2d_2 + PWN(node_add, node_relu_2)", "pointwise", ("node_conv2d_2", "node_add", "node_relu_2"), ()),
    ("{ForeignNode[node_view...node_softmax]}", "foreign", (), (("node_view", "node_softmax"),)),
    ("Reformatting CopyNode for Input Tensor 0 to node_conv2d + node_relu", "reformat",
     ("node_conv2d", "node_relu"), ()),
    ("Reformatting CopyNode for Output Tensor 0 to {ForeignNode[node_view...node_softmax]}", "reformat",
     (), (("node_view", "node_softmax"),)),
    ("node_linear input reformatter 0", "reformat", ("node_linear",), ()),
    ("fc.weight + (Unnamed Layer* 9) [Shuffle]", "fused", ("fc.weight", "(Unnamed Layer* 9) [Shuffle]"), ()),
])
def test_parse_layer_name(name, kind, parts, ranges):
    parsed = L.parse_layer_name(name)
    assert (parsed.kind, parsed.parts, parsed.ranges) == (kind, parts, ranges)
    assert (parsed.target is not None) == (kind == "reformat")


def test_metadata_nodes_both_separators():
    text = "[ONNX Layer: node_conv2d]\x1f[ONNX Layer: node_relu]\x1e[ONNX Layer: /model/fc/Gemm]"
    assert L.metadata_nodes(text) == ["node_conv2d", "node_relu", "/model/fc/Gemm"]
    assert L.metadata_nodes(None) == [] and L.metadata_nodes("") == []


@pytest.mark.parametrize("formats,expected", [
    (["Row major linear FP32"], "fp32"),
    (["Channel major FP16 format where channel % 8 == 0", "Row major linear FP32"], "fp16"),
    (["Row major Int8 format", "Row major linear FP32"], "int8"),
    (["Half"], "fp16"), (["Float"], "fp32"), (["Row major linear BF16 format"], "bf16"),
    (["Row major linear Int32"], None), ([], None),
])
def test_io_precision(formats, expected):
    assert L.io_precision(formats) == expected


# -- the index and name resolution ----------------------------------------------------------
def test_onnx_index_keeps_modules_and_fx_nodes(index):
    conv_bn = index.nodes["node_Conv_15"]
    assert conv_bn.module == "layer1.bn1" and conv_bn.fx == ("getitem",) and conv_bn.op_type == "Conv"
    assert index.nodes["node_linear"].fx == ("linear",) and index.nodes["node_view"].module == ""
    assert "fc.weight" in index.constants and index.by_output["relu_2"] == "node_relu_2"
    assert index.first_consumer["fc.weight"] == "node_linear"


@pytest.mark.parametrize("part,node", [
    ("node_relu_1", "node_relu_1"), ("relu_1", "node_relu_1"),                # node, or the value it makes
    ("copied_squeeze_after_node_add", "node_add"), ("node_linear_clone_1", "node_linear"),
    ("node_linear_output", "node_linear"), ("node_linear_bias_add", "node_linear"),
    ("node_relu_12", "node_relu"),  # the parser's unique names for a node's further layers: NAME_N
    ("node_relux", None),           # no "_" boundary: not derived from node_relu
    ("__myl_MulAdd_myl0_3", None), ("fc.weight", None),
])
def test_resolve(index, part, node):
    assert L.resolve(part, index) == node


def test_anonymous_members(index):
    for part in ("(Unnamed Layer* 9) [Shuffle]", "(Unnamed Layer* 21) [Shuffle]_(Unnamed Layer* 21) [Shuffle]_output",
                 "fc.weight", "unsqueeze_node_after_fc.weight", "__myl_Fc_myl0_1"):
        assert L.is_anonymous(part, index), part
    assert not L.is_anonymous("node_does_not_exist", index)


# -- a dynamo-named engine: names only (default verbosity) ---------------------------------
DYNAMO_FP32 = [
    "Reformatting CopyNode for Input Tensor 0 to node_conv2d + node_relu",
    "node_conv2d + node_relu",
    "node_Conv_15 + node_relu_1",
    "node_conv2d_2 + node_add + node_relu_2",
    "node_mean",
    "{ForeignNode[node_view...node_softmax]}",
    "Reformatting CopyNode for Output Tensor 0 to {ForeignNode[node_view...node_softmax]}",
]


def test_map_dynamo_names_to_modules(index):
    mapped = L.map_layers(L.read_engine_information({"Layers": DYNAMO_FP32, "Bindings": ["x", "softmax"]}), index)
    by_name = {m["name"]: m for m in mapped}
    stem = by_name["node_conv2d + node_relu"]
    assert stem["fused"] and stem["kind"] == "fused" and stem["how"] == "name"
    assert [(m["node"], m["module"], m["fx"]) for m in stem["members"]] == \
        [("node_conv2d", "stem.0", ["conv2d"]), ("node_relu", "stem.1", ["relu"])]
    reformat = by_name[DYNAMO_FP32[0]]
    assert reformat["kind"] == "reformat" and not reformat["fused"]
    assert reformat["reformat_of"] == "node_conv2d + node_relu"
    foreign = by_name["{ForeignNode[node_view...node_softmax]}"]
    assert foreign["how"] == "name range" and foreign["fused"]
    assert [m["node"] for m in foreign["members"]] == ["node_view", "node_linear", "node_softmax"]
    assert all(not m["unmatched"] for m in mapped)
    view = L.layer_modules(mapped)
    assert view[2] == {"layer": "node_Conv_15 + node_relu_1", "kind": "fused", "fused": True, "reformat_of": None,
                       "nodes": ["node_Conv_15", "node_relu_1"], "modules": ["layer1.bn1", "layer1"],
                       "precision": None}


def test_fusion_groups_feed_the_layer_rows(index):
    from backendiff.layers import Layer, mark_fused

    mapped = L.map_layers(L.read_engine_information({"Layers": DYNAMO_FP32}), index)
    present, groups = L.fusion_groups(mapped)
    assert groups == {"conv2d": "relu", "getitem": "relu_1", "conv2d_2": "relu_2", "add": "relu_2",
                      "view": "softmax", "linear": "softmax"}
    assert present == {"relu", "relu_1", "relu_2", "mean", "softmax"}
    # the FX program has a conv2d the exporter folded into the batch norm (no ONNX node of its own)
    chain = ["conv2d", "relu", "conv2d_1", "getitem", "relu_1", "conv2d_2", "add", "relu_2", "mean", "view",
             "linear", "softmax"]
    layers = [Layer(i, n, "op", "", None, (chain[i - 1],) if i else ()) for i, n in enumerate(chain)]
    rows = [{"node": n, "fused_into": None} for n in chain]
    mark_fused(rows, layers, present, groups)
    fused = {r["node"]: r["fused_into"] for r in rows}
    assert fused["conv2d"] == "relu" and fused["add"] == "relu_2" and fused["linear"] == "softmax"
    assert fused["conv2d_1"] == "relu_1"   # gone from the engine: into the first downstream layer present
    assert fused["relu"] is None and fused["mean"] is None


def test_pointwise_and_myelin_with_metadata(index):
    """Detailed verbosity: Metadata names the ONNX nodes exactly, even for Myelin kernels
    whose names say nothing; formats give each layer's precision."""
    detailed = {"Layers": [
        {"Name": "node_conv2d + node_relu", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: node_conv2d]\x1f[ONNX Layer: node_relu]",
         "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "relu", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "TacticName": "sm80_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc"},
        {"Name": "node_conv2d_2", "LayerType": "CaskConvolution", "Metadata": "[ONNX Layer: node_conv2d_2]",
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}],
         "TacticName": "sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nchw"},
        {"Name": "PWN(PWN(node_add), node_relu_2)", "LayerType": "PointWiseV2",
         "Metadata": "[ONNX Layer: node_add]\x1f[ONNX Layer: node_relu_2]",
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}], "TacticName": "0x0"},
        {"Name": "__myl_MeanResFcSoft_myl0_0", "LayerType": "kgen",
         "Metadata": "[ONNX Layer: node_mean]\x1f[ONNX Layer: node_view]\x1f[ONNX Layer: node_linear]"
                     "\x1f[ONNX Layer: node_softmax]",
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to node_conv2d_2", "LayerType": "Reformat",
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
    ]}
    layers = L.read_engine_information(json.dumps(detailed))
    assert layers[0].metadata == ("node_conv2d", "node_relu") and layers[0].precision == "fp16"
    assert layers[1].precision == "tf32"  # an fp32 layer on a TF32 kernel
    mapped = L.map_layers(layers, index)
    assert all(m["how"] == "metadata" for m in mapped[:4])
    assert [m["node"] for m in mapped[3]["members"]] == ["node_mean", "node_view", "node_linear", "node_softmax"]
    assert mapped[3]["kind"] == "fused" and mapped[1]["kind"] == "layer" and not mapped[1]["fused"]
    assert mapped[2]["kind"] == "pointwise" and mapped[2]["fused"]
    assert L.runtime_precisions(layers) == {"fp16": 1, "tf32": 1, "fp32": 2}   # the reformat is left out
    present, groups = L.fusion_groups(mapped)
    assert groups["mean"] == groups["linear"] == "softmax" and groups["add"] == "relu_2"


def test_unmapped_names_make_presence_unknown(index):
    """A layer named in terms the graph does not have: what is present is unknown (None), so
    no row is called fused for lack of a match; the groups found still count."""
    mapped = L.map_layers([L.EngineLayer("node_conv2d + node_relu"), L.EngineLayer("someone_elses_layer")], index)
    assert mapped[1]["unmatched"] == ["someone_elses_layer"]
    present, groups = L.fusion_groups(mapped)
    assert present is None and groups == {"conv2d": "relu"}


# -- names posted in TensorRT's issue tracker ---------------------------------------------------
def _names_graph(names, initializers=()):
    """A chain of nodes with just these names (no dynamo metadata), as a plain ONNX export has."""
    nodes = [(n, "Identity", [f"{names[i - 1]}:0" if i else "input"], [f"{n}:0"], n, "") for i, n in enumerate(names)]
    return L.onnx_index(graph(nodes, initializers, fx=False))


def test_recorded_tf2onnx_mnist_list():
    """NVIDIA/trt-samples-for-hackathon-cn#18 (TensorRT 8.4, trtexec --exportLayerInfo)."""
    recorded = ["Conv__25 + Relu", "MaxPool2d", "Reformatting CopyNode for Output Tensor 0 to MaxPool2d",
                "Conv__27 + Relu_1", "Reformatting CopyNode for Input Tensor 0 to MaxPool2d_1", "MaxPool2d_1",
                "MaxPool2d_1__22 + Reshape + (Unnamed Layer* 14) [Shuffle]",
                "MatMul + b3/read:0 + (Unnamed Layer* 21) [Shuffle] + unsqueeze_node_after_b3/read:0 + "
                "(Unnamed Layer* 21) [Shuffle]_(Unnamed Layer* 21) [Shuffle]_output + add_2 + Relu_2",
                "MatMul_1 + b4/read:0 + (Unnamed Layer* 37) [Shuffle] + unsqueeze_node_after_b4/read:0 + "
                "(Unnamed Layer* 37) [Shuffle]_(Unnamed Layer* 37) [Shuffle]_output + add_3",
                "copied_squeeze_after_add_3", "y + z", "(Unnamed Layer* 52) [Shuffle]"]
    index = _names_graph(["Conv__25", "Relu", "MaxPool2d", "Conv__27", "Relu_1", "MaxPool2d_1", "MaxPool2d_1__22",
                          "Reshape", "MatMul", "add_2", "Relu_2", "MatMul_1", "add_3", "y", "z"],
                         ["b3/read:0", "b4/read:0"])
    mapped = L.map_layers(L.read_engine_information(json.dumps({"Layers": recorded})), index)
    assert all(not m["unmatched"] for m in mapped), [m["unmatched"] for m in mapped]
    nodes = [[x["node"] for x in m["members"]] for m in mapped]
    assert nodes[0] == ["Conv__25", "Relu"] and nodes[6] == ["MaxPool2d_1__22", "Reshape"]
    assert nodes[7] == ["MatMul", "add_2", "Relu_2"] and nodes[8] == ["MatMul_1", "add_3"]
    assert nodes[9] == ["add_3"] and nodes[11] == [] and mapped[2]["kind"] == "reformat"


def test_recorded_onnx_zoo_resnet18_list():
    """NVIDIA/TensorRT#4020: resnet18-v1-7 built with --fp16 --int8 (TensorRT 10, names only)."""
    recorded = [
        "Reformatting CopyNode for Input Tensor 0 to resnetv15_conv0_fwd + resnetv15_batchnorm0_fwd + "
        "resnetv15_relu0_fwd + resnetv15_pool0_fwd",
        "resnetv15_conv0_fwd + resnetv15_batchnorm0_fwd + resnetv15_relu0_fwd + resnetv15_pool0_fwd",
        "resnetv15_stage1_conv0_fwd + resnetv15_stage1_batchnorm0_fwd + resnetv15_stage1_relu0_fwd",
    ]
    index = _names_graph(["resnetv15_conv0_fwd", "resnetv15_batchnorm0_fwd", "resnetv15_relu0_fwd",
                          "resnetv15_pool0_fwd", "resnetv15_stage1_conv0_fwd", "resnetv15_stage1_batchnorm0_fwd",
                          "resnetv15_stage1_relu0_fwd"])
    mapped = L.map_layers(L.read_engine_information({"Layers": recorded}), index)
    assert len(mapped[1]["members"]) == 4 and mapped[1]["fused"]
    assert mapped[0]["reformat_of"] == recorded[1] and not mapped[0]["fused"]
    present, groups = L.fusion_groups(mapped)
    # a plain ONNX graph's layers are keyed by each node's first output
    assert groups["resnetv15_conv0_fwd:0"] == groups["resnetv15_relu0_fwd:0"] == "resnetv15_pool0_fwd:0"
    assert present == {"resnetv15_pool0_fwd:0", "resnetv15_stage1_relu0_fwd:0"}


def test_recorded_torchscript_exporter_names_and_foreign_node_from_a_weight():
    """NVIDIA/TensorRT#4048 (RT-DETR, TensorRT 10.0.1) and #3768: a ForeignNode whose first end
    is a weight ("encoder.fea_bn1.weight") starts at the node reading it."""
    conv, relu = "/model/backbone/conv1/conv1_1/conv/Conv", "/model/backbone/conv1/conv1_1/act/Relu"
    index = _names_graph([conv, relu, "/model/backbone/MaxPool", "/encoder/fea_bn1/BatchNormalization",
                          "/encoder/MatMul", "/softmax/Softmax"], ["encoder.fea_bn1.weight"])
    # the BatchNormalization node reads the weight in a real graph; here it is made to
    bn = L.OnnxIndex(index.nodes, index.constants, index.by_output,
                     {**index.first_consumer, "encoder.fea_bn1.weight": "/encoder/fea_bn1/BatchNormalization"})
    mapped = L.map_layers([L.EngineLayer(f"Reformatting CopyNode for Input Tensor 0 to {conv} + {relu}"),
                           L.EngineLayer(f"{conv} + {relu}"), L.EngineLayer("/model/backbone/MaxPool"),
                           L.EngineLayer("{ForeignNode[encoder.fea_bn1.weight.../softmax/Softmax]}")], bn)
    assert [m["node"] for m in mapped[1]["members"]] == [conv, relu]
    assert [m["node"] for m in mapped[3]["members"]] == ["/encoder/fea_bn1/BatchNormalization", "/encoder/MatMul",
                                                         "/softmax/Softmax"]
    assert all(not m["unmatched"] for m in mapped)


# -- precision constraints on the parsed network -----------------------------------------------
def test_network_layer_node(index):
    assert L.network_layer_node("node_linear", None, index) == "node_linear"
    assert L.network_layer_node("node_linear_1", None, index) == "node_linear"   # the node's second layer
    assert L.network_layer_node("(Unnamed Layer* 7) [Shuffle]", "[ONNX Layer: node_linear]", index) == "node_linear"
    assert L.network_layer_node("fc.weight", None, index) is None


def test_constraint_plan_keeps_float_layers_of_kept_nodes(index):
    layers = [("node_conv2d", "[ONNX Layer: node_conv2d]", ["DataType.FLOAT"]),
              ("node_relu", None, ["FLOAT"]),
              ("fc.weight", None, ["FLOAT"]),                                   # a constant: no node
              ("node_linear", None, ["HALF"]),
              ("node_linear_1", None, ["FLOAT", "INT32"]),                      # second layer, one float output
              ("node_view_shape", "[ONNX Layer: node_view]", ["INT64"])]        # shape math: nothing to keep
    plan = L.constraint_plan(layers, {"node_conv2d", "node_linear", "node_view"}, index)
    assert plan == [(0, [0]), (3, [0]), (4, [0])]
    assert L.constraint_plan(layers, set(), index) == []
