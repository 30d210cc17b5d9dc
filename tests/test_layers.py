"""Propagated layer-wise localization: named by PyTorch module, NaN birth first."""
import random

import numpy as np
import pytest
import torch
from torch import nn

import backendiff
from backendiff.backends.pytorch import TorchAdapter, TorchCompiled
from backendiff.layers import first_divergence, growth, record_nodes
from backendiff.registry import register_backend, unregister_backend

from .conftest import available, needs
from .test_variants import Overflow


def test_growth_and_first_divergence_rules():
    assert growth(0.2, [0.1]) == pytest.approx(1.0, rel=1e-5)
    assert growth(0.1, []) == pytest.approx(1e6)
    def row(i, within, g, born=False):
        return {"index": i, "module": f"m{i}", "op_type": "x", "node": f"n{i}", "source": None, "metrics": {},
                "growth": g, "within_tolerance": within, "nonfinite_born": born}
    rows = [row(0, True, 5.0), row(1, False, 0.1), row(2, False, 3.0), row(3, False, 9.0, born=True)]
    assert first_divergence(rows)["node"] == "n3" and first_divergence(rows)["reason"] == "nonfinite"
    rows[3]["nonfinite_born"] = False
    assert first_divergence(rows)["node"] == "n2" and first_divergence(rows)["reason"] == "growth"
    assert first_divergence([row(0, True, 1.0)]) is None


def test_fp16_overflow_on_every_runtime():
    """torch:fp16 and tvm:fp16 overflow for real and name the module; ORT's deployed fp16
    model stays finite (it runs in fp32) while its instrumented run overflows: both shown."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    specs = ["torch:fp16"] + [s for s in ("tvm:fp16", "ort:fp16") if available(s.split(":")[0])]
    report = backendiff.compare(Overflow().eval(), inputs=(x,), backends=specs)
    for spec in specs:
        if spec == "ort:fp16":
            continue
        fd = report.backend(spec).first_divergence
        assert (fd["module"], fd["reason"]) == ("up", "nonfinite"), spec
    for spec in ("torch:fp16", "tvm:fp16"):
        if spec in specs:
            assert report.backend(spec).outputs[0].metrics["nonfinite"] > 0
            assert "instrumentation_changed" not in report.backend(spec).info
    if "ort:fp16" in specs:
        ort16 = report.backend("ort:fp16")
        assert ort16.outputs[0].metrics["nonfinite"] == 0                    # deployed: finite
        assert {"nonfinite_only_when_instrumented": ["up"]} in ort16.info["instrumentation_changed"]
        # the instrumented run's overflow is not the deployed model's: bisection through the
        # deployed ONNX, started on its own, names where the deployed model starts to differ
        assert ort16.info["bisection"]["automatic"]
        assert (ort16.first_divergence["module"], ort16.first_divergence["reason"]) == ("down", "bisection")


def test_fp16_overflow_names_the_module_where_the_first_inf_is_born():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    report = backendiff.compare(Overflow().eval(), inputs=(x,), backends=["torch:fp16", "torch"],
                                layerwise="always")
    fd = report.backend("torch:fp16").first_divergence
    assert fd["module"] == "up" and fd["reason"] == "nonfinite" and fd["op_type"] == "linear"
    from backendiff.models.nets import Fp16Overflow

    assert fd["source"].endswith("nets.py:" + str(Fp16Overflow.forward.__code__.co_firstlineno + 1))
    assert report.backend("torch").first_divergence is None
    assert [r["module"] for r in report.backend("torch").layers] == ["up", "", "down"]
    auto = backendiff.compare(Overflow().eval(), inputs=(x,), backends=["torch:fp16", "torch"])
    assert auto.backend("torch").layers == [] and auto.backend("torch:fp16").first_divergence["module"] == "up"
    assert all(r["metrics"]["max_abs"] == 0 for r in report.backend("torch").layers)


class RandomNet(nn.Module):
    """A random stack of small layers (the property test's architectures)."""

    KINDS = ("linear", "relu", "gelu", "norm", "tanh", "residual")

    def __init__(self, rng: random.Random, width: int = 12):
        super().__init__()
        blocks = []
        for _ in range(rng.randint(3, 8)):
            kind = rng.choice(self.KINDS)
            if kind == "linear":
                blocks.append(nn.Linear(width, width))
            elif kind == "relu":
                blocks.append(nn.Sequential(nn.Linear(width, width), nn.ReLU()))
            elif kind == "gelu":
                blocks.append(nn.Sequential(nn.Linear(width, width), nn.GELU()))
            elif kind == "norm":
                blocks.append(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)))
            elif kind == "tanh":
                blocks.append(nn.Sequential(nn.Linear(width, width), nn.Tanh()))
            else:
                blocks.append(Residual(width))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.sigmoid(self.fc(x))


class Nudge(TorchAdapter):
    """Test-only backend: PyTorch with exactly one chosen FX node's output shifted by 0.1."""

    name = "nudge"
    target: str = ""

    def _nudged(self, model):
        gm = model.program("onnx").module()
        node = next(n for n in gm.graph.nodes if n.name == self.target)
        with gm.graph.inserting_after(node):
            shifted = gm.graph.call_function(torch.ops.aten.add.Tensor, (node, 0.1))
        node.replace_all_uses_with(shifted, delete_user_cb=lambda user: user is not shifted)
        gm.recompile()
        return gm, shifted.name

    def compile(self, module, folder):
        return TorchCompiled(self._gm)

    def convert(self, model, folder):
        self._gm, _ = self._nudged(model)
        return None

    def layer_values(self, model, sample):
        gm, shifted = self._nudged(model)
        values = record_nodes(gm, [torch.from_numpy(np.array(a)) for a in sample.values()])
        values[self.target] = values.pop(shifted)  # the chosen node, as the backend computed it
        return values


def test_first_divergence_names_the_altered_node_every_time():
    rng = random.Random(1234)
    trials = hits = absorbed = 0
    register_backend(Nudge)
    try:
        for _ in range(12):
            torch.manual_seed(rng.randint(0, 10_000))
            model = RandomNet(rng).eval()
            x = torch.randn(2, 12)
            ep = torch.export.export(model, (x,))
            nodes = [n for n in ep.graph.nodes if n.op == "call_function"]
            for node in rng.sample(nodes, min(3, len(nodes))):
                Nudge.target = node.name
                expected = list(node.meta["nn_module_stack"].values())[-1][0]
                report = backendiff.compare(model, inputs=(x,), backends=["nudge"], golden=False, use_cache=False)
                fd = report.backend("nudge").first_divergence
                trials += 1
                if report.backend("nudge").status == "ok":
                    # the shift was absorbed (e.g. by a LayerNorm): then no divergence is claimed
                    assert fd is None
                    hits += 1
                    absorbed += 1
                    continue
                hits += fd is not None and fd["node"] == node.name and fd["module"] == expected
    finally:
        unregister_backend("nudge")
    assert trials >= 30 and hits == trials
    assert absorbed <= trials // 4, absorbed   # most shifts do reach the outputs: the test has teeth


@needs("ort")
def test_ort_layers_are_matched_to_modules():
    report = backendiff.compare("zoo:digits-cnn", backends=["ort", "ort:fp16"], layerwise="always")
    fp32, fp16 = report.backend("ort"), report.backend("ort:fp16")
    modules = [row["module"] for row in fp32.layers]
    assert {"features.0", "features.1", "features.3", "classifier"} <= set(modules)
    assert next(r for r in fp32.layers if r["module"] == "features.1")["op_type"].startswith("_native_batch_norm")
    assert all(row["within_tolerance"] for row in fp32.layers) and fp32.first_divergence is None
    assert "marked as a graph output" in fp32.info["layers_from"]
    # fp16 rounding: every layer's SQNR far below fp32's, on the same rows
    assert [r["node"] for r in fp16.layers] == [r["node"] for r in fp32.layers]
    assert max(r["metrics"]["sqnr_db"] for r in fp16.layers) < 90 < min(
        r["metrics"]["sqnr_db"] or 999 for r in fp32.layers)


@needs("openvino")
def test_openvino_layers_and_where_bf16_starts():
    report = backendiff.compare("zoo:digits-cnn", backends=["openvino", "openvino:fp32,precision_hint=default"])
    pinned, native = report.backends
    assert pinned.layers == []                       # agreed: no layer-wise run by default
    if native.precision["runtime"] == "fp32":
        pytest.skip("this CPU runs OpenVINO's default precision in fp32")
    assert native.status == "diverged" and len(native.layers) >= 9
    fd = native.first_divergence
    # on the export route OpenVINO's conversion folds the first conv into its batch norm: the
    # first value it has is the batch norm's (features.1), which computes the conv
    assert (fd["module"], fd["reason"]) in (("features.0", "growth"), ("features.1", "growth"))
    assert fd["source"].endswith("digits_cnn.py:" + str(next(
        i for i, line in enumerate(open(fd["source"].rsplit(":", 1)[0]), 1) if "self.features(x)" in line)))


def test_a_failing_layer_view_loses_nothing():
    class Broken(Nudge):
        name = "broken"

        def convert(self, model, folder):
            return model.loaded.module

        def compile(self, module, folder):
            return TorchCompiled(module)

        def layer_values(self, model, sample):
            raise RuntimeError("no intermediates today")

    register_backend(Broken)
    try:
        report = backendiff.compare("zoo:digits-cnn-narrow", backends=["broken"], layerwise="always")
    finally:
        unregister_backend("broken")
    b = report.backend("broken")
    assert b.status == "ok" and b.outputs and b.info["layers_error"] == "RuntimeError: no intermediates today"


@needs("tvm")
def test_tvm_layers_from_the_instrumented_export():
    report = backendiff.compare("zoo:digits-cnn", backends=["tvm", "tvm:fp16"], layerwise="always")
    fp32, fp16 = report.backend("tvm"), report.backend("tvm:fp16")
    assert len(fp32.layers) == len(fp16.layers) >= 10 and "layers_error" not in fp32.info
    assert all(r["within_tolerance"] for r in fp32.layers)
    assert max(r["metrics"]["sqnr_db"] for r in fp16.layers) < 80
    assert fp32.info["fusion"].startswith("unknown")   # TVM does not say what it fused


def test_terminal_layer_view():
    from backendiff.render import depth_line, layer_lines

    rows = [{"metrics": {"sqnr_db": v, "identical": v is None}} for v in (None, 120.0, 80.0, 40.0)]
    assert depth_line(rows) == "▁▃▅█"   # None (exact) is the top of the range
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    report = backendiff.compare(Overflow().eval(), inputs=(x,), backends=["torch:fp16"])
    lines = layer_lines(report.backend("torch:fp16"))
    assert lines[0].startswith("torch:fp16: divergence starts at up (linear, node linear)")
    assert "first NaN/Inf born here" in lines[0] and lines[0].endswith("[propagated view]")
    assert lines[1] == "  layer values from torch.fx.Interpreter over the ExportedProgram at the variant's precision"
    assert lines[2].startswith("  suspect up (linear)")
    assert lines[-1].startswith("  error vs depth (3 layers")


@needs("ort", "openvino")
def test_fusions_of_the_deployed_model_are_reported():
    report = backendiff.compare("zoo:digits-cnn", backends=["ort", "ort:opt=disable", "openvino"], layerwise="always")
    fused = {b.spec: {r["node"]: r["fused_into"] for r in b.layers} for b in report.backends}
    # the exporter folds each BatchNorm into its Conv: with ORT's own fusions off, conv -> batch norm
    assert fused["ort:opt=disable"]["conv2d"] == "getitem" and fused["ort:opt=disable"]["getitem"] is None
    # ORT's fusions (Conv+Relu -> FusedConv): conv and batch norm both computed inside the relu's op
    assert fused["ort"]["conv2d"] == fused["ort"]["getitem"] == "relu" and fused["ort"]["relu"] is None
    # OpenVINO lists it itself (originalLayersNames): batch norm and relu in one Convolution primitive
    assert fused["openvino"]["getitem"] == "relu"
    assert fused["ort"]["linear"] is None   # never silently dropped: unfused rows say None
    assert "fusion" not in report.backend("ort").info


def test_isolated_mode_confirms_where_the_nan_is_born():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    report = backendiff.compare(Overflow().eval(), inputs=(x,), backends=["torch:fp16"], isolate_layers=True)
    b = report.backend("torch:fp16")
    rows = {r["node"]: r for r in b.layers}
    assert rows["linear"]["isolated"]["nonfinite_born"]                     # 'up' overflows on its own
    assert rows["linear_1"]["metrics"]["nonfinite"] > 0                    # propagated: carries it
    assert rows["linear_1"]["isolated"]["metrics"]["nonfinite"] == 0       # 'down' on finite inputs: finite
    assert b.first_divergence["node"] == "linear" and b.first_divergence["confirmed"] is True


@needs("ort", "openvino", "tvm")
def test_isolated_mode_runs_on_every_onnx_runtime():
    report = backendiff.compare("zoo:digits-cnn", backends=["ort", "openvino:fp32,route=onnx", "tvm:fp16,route=onnx"],
                                layerwise="always", isolate_layers=True)
    for b in report.backends:
        isolated = [r for r in b.layers if "isolated" in r]
        assert len(isolated) == len(b.layers) >= 10, b.spec
        assert "every layer fed the reference values" in b.info["isolated_from"]
    # fp32: each layer's own error is rounding only
    assert all(r["isolated"]["within_tolerance"] for r in report.backend("ort").layers)
    # fp16: a layer's own error is smaller than what it inherits (error accumulates)
    tvm16 = report.backend("tvm:fp16,route=onnx").layers
    last = tvm16[-1]
    assert last["isolated"]["metrics"]["mean_abs"] < last["metrics"]["mean_abs"]


@needs("ort", "openvino")
def test_onnx_sources_get_a_layer_view_from_the_onnx_reference(tmp_path):
    from backendiff.models import ZOO

    model = ZOO["digits-cnn"].build()
    ep = torch.export.export(model, (torch.rand(8, 1, 8, 8),))
    torch.onnx.export(ep, dynamo=True).save(str(tmp_path / "digits.onnx"))
    report = backendiff.compare(str(tmp_path / "digits.onnx"), backends=["ort", "openvino"], layerwise="always",
                                isolate_layers=True)
    for b in report.backends:
        modules = [r["module"] for r in b.layers]
        assert "classifier" in modules and "features.4" in modules, b.spec   # names from the exporter's metadata
        assert all(r["within_tolerance"] and "isolated" in r for r in b.layers)
    assert report.reference["backend"] == "onnx.reference"


def test_layers_carry_the_fp64_baseline_only_where_a_layer_diverged():
    """The fp64 intermediates are a second pass over the model: made only where a layer is
    outside tolerance (the floor tells it from fp32 rounding), not on every layer-wise run."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    report = backendiff.compare(Overflow().eval(), inputs=(x,), backends=["torch", "torch:fp16"], layerwise="always")
    agreeing, diverged = report.backend("torch"), report.backend("torch:fp16")
    assert agreeing.status == "ok" and not any("fp64_baseline" in r for r in agreeing.layers)
    assert agreeing.info["fp64_layers"].startswith("not computed")
    assert diverged.status == "diverged" and "fp64_layers" not in diverged.info
    assert all(r["fp64_baseline"]["sqnr_db"] > 100 for r in diverged.layers if r.get("fp64_baseline"))
    assert sum("fp64_baseline" in r for r in diverged.layers) >= len(diverged.layers) - 1


@needs("tvm")
def test_tvm_layers_of_bias_free_convolutions():
    """The unoptimized export builds a bias-free conv's zero bias from Shape/Expand of its
    weight, which Relax's importer cannot read: those are folded before the import."""
    from torch import nn

    class BiasFree(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    torch.manual_seed(0)
    report = backendiff.compare(BiasFree().eval(), inputs=(torch.rand(1, 3, 16, 16),), backends=["tvm"],
                                layerwise="always")
    b = report.backend("tvm")
    assert "layers_error" not in b.info and {r["module"] for r in b.layers} >= {"conv", "bn"}


@needs("openvino")
def test_openvino_export_route_layers_come_from_the_converted_exported_program():
    """The default route's layer values come from the model ov.convert_model made of the
    ExportedProgram: rows keyed by its tensor names (OpenVINO's own decomposition: native
    layer norm's getitem, linear kept whole), fusion read back on those names; route=onnx
    keeps the ONNX export's names."""
    report = backendiff.compare("zoo:digits-cnn", backends=["openvino", "openvino:fp32,route=onnx"],
                                layerwise="always", isolate=False)
    export, onnx = report.backend("openvino"), report.backend("openvino:fp32,route=onnx")
    assert "ExportedProgram" in export.info["layers_from"] and "onnx route" in onnx.info["layers_from"]
    nodes = [r["node"] for r in export.layers]
    # the converted model's tensor names: its conversion folded each conv into its batch norm
    # (a BatchNormInference named getitem), the ONNX route keeps the conv2d
    assert "conv2d" not in nodes and {"getitem", "relu", "linear"} <= set(nodes)
    assert "conv2d" in [r["node"] for r in onnx.layers]
    assert len(nodes) >= 8 and all(r["within_tolerance"] for r in export.layers)
    assert all(r["node"] != r["fused_into"] for r in export.layers)      # nothing fused into itself


class Outlier(torch.nn.Module):
    """One channel scaled 1000x by a multiply in the model's own forward, between two convs
    (the next conv scales it back, as a norm would): per-tensor int8 of that tensor rounds
    the other channels to zero."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        scale = torch.ones(1, 8, 1, 1)
        scale[0, 0] = 1000.0
        self.boost = torch.nn.Module()
        self.boost.register_buffer("scale", scale)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight[:, 0] /= 1000.0
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x)) * self.boost.scale
        return self.head(torch.relu(self.conv2(y)))


@needs("ort")
@pytest.mark.parametrize("spec", ["ort:int8", "ort:int8,per_channel=false"])
def test_ort_int8_layer_view_names_the_outlier(spec):
    """The int8 layer view reads the deployed QDQ model (the DequantizeLinear output that
    stands for each quantized tensor): it names the multiply that makes the outlier."""
    x = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
    report = backendiff.compare(Outlier(), inputs=x, backends=[spec], use_cache=False, isolate=False, advise=False)
    b = report.backends[0]
    assert b.status == "diverged" and "DequantizeLinear" in b.info["layers_from"]
    assert len(b.layers) >= 3 and "layers_error" not in b.info
    assert b.first_divergence["op_type"] == "mul" and b.first_divergence["reason"] == "growth"
    assert b.first_divergence["module"] == ""                       # the model's own forward (<top>)
    # the convs ORT's QDQ quantizer folded (Conv+ReLU) are reported, not dropped
    missing = {m["node"]: m for m in b.info["unmeasured_layers"]}
    assert missing["conv2d"]["fused_into"] == "relu" and missing["conv2d_1"]["fused_into"] == "relu_1"
    assert "conv2d_2" in [r["node"] for r in b.layers]               # the graph's own output has a row


@needs("ort")
def test_ort_int8_bisects_the_deployed_qdq_model():
    """Forced bisection on ort:int8 cuts the quantized model (not the fp32 export, where
    nothing diverges): the first diverging cut is the outlier tensor's reader."""
    x = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
    report = backendiff.compare(Outlier(), inputs=x, backends=["ort:int8"], use_cache=False, isolate=False,
                                advise=False, bisect=True)
    found = report.backends[0].info["bisection"]
    assert "QDQ" in found["graph"] and found["candidates"] >= 3
    assert found["first_diverging_cut"]["node"] in ("mul", "relu_1")


@needs("openvino")
def test_openvino_int8_layer_view_reads_the_deployed_nncf_model():
    """openvino:int8 has a layer view on the deployed NNCF model (quantized tensors read at
    their FakeQuantize), on both routes; the convs folded into batch norm are accounted for
    as fused, and bisection cuts the quantized model."""
    tight = {"atol": 0.03, "rtol": 0.03}
    report = backendiff.compare("zoo:digits-cnn", backends=["openvino:int8", "openvino:int8,route=onnx"],
                                layerwise="always", advise=False, bisect=True, **tight)
    for b in report.backends:
        assert b.status == "diverged" and "FakeQuantize" in b.info["layers_from"] and "layers_error" not in b.info
        assert len(b.layers) >= 8 and all(r["metrics"]["sqnr_db"] < 60 for r in b.layers)   # int8 values, not fp32
        convs = [m for m in b.info["unmeasured_layers"] if m["module"] in ("features.0", "features.3")]
        assert len(convs) == 2 and all(m["fused_into"] for m in convs)
        assert "NNCF int8" in b.info["bisection"]["graph"] and b.info["bisection"]["first_diverging_cut"]
        assert b.first_divergence is not None
    export = report.backend("openvino:int8")
    assert any(r["fused_into"] for r in export.layers)     # read back from the compiled model's primitives


def nudged_reference(monkeypatch, position: float) -> dict:
    """Make the reference's layer values those of the graph with one node shifted (the node
    at ``position`` (0..1) among its floating-point call_function nodes, shifted by 1 + its
    largest magnitude, downstream values following): a backend that computes the model
    faithfully then differs from the reference first at exactly that node, on whatever route
    it runs. Returns {graph's node names: chosen node} as the runs fill it."""
    import copy
    import operator

    import backendiff.layers as L

    original, chosen = L.walk_nodes, {}

    def walk(*runs, on_value, **kw):
        if len(runs) != 1 and isinstance(runs[0], tuple):     # the fp32/fp64 pair: not nudged
            return original(*runs, on_value=on_value, **kw)
        graph_module, args = runs[0] if isinstance(runs[0], tuple) else runs
        gm = copy.deepcopy(graph_module)
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem
                 and isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].is_floating_point()
                 and n.meta["val"].dtype == torch.float32]
        node = nodes[min(int(position * len(nodes)), len(nodes) - 1)]
        clean = {}
        original(graph_module, args, on_value=lambda name, v: clean.setdefault(name, v) if name == node.name else None)
        shift = 1.0 + float(np.abs(clean[node.name]).max())
        with gm.graph.inserting_after(node):
            shifted = gm.graph.call_function(torch.ops.aten.add.Tensor, (node, shift))
        node.replace_all_uses_with(shifted, delete_user_cb=lambda user: user is not shifted)
        gm.recompile()
        chosen[frozenset(n.name for n in gm.graph.nodes)] = node.name

        def renamed(name, value):        # the shifted value stands for the node's own
            if name == shifted.name:
                on_value(node.name, value)
            elif name != node.name:
                on_value(name, value)
        original(gm, args, on_value=renamed, **kw)

    monkeypatch.setattr(L, "walk_nodes", walk)
    return chosen


ROUTES = [pytest.param(s, marks=pytest.mark.skipif(not available(s.split(":")[0]), reason=f"{s} not installed"))
          for s in ("ort", "openvino", "tvm", "ort:int8")]


@pytest.mark.parametrize("spec", ROUTES)
def test_each_default_route_names_a_perturbed_node_every_time(spec, monkeypatch):
    """#4's property on the real runtimes, default routes and ort:int8: random nets, one node
    of the reference shifted at a random depth; the layer view of the real backend (its own
    route's program and names, int8 read from the deployed QDQ model) must put the first
    divergence at that node, or at the op the runtime fused it into. Hit rate 100%."""
    from backendiff.layers import first_divergence

    rng = random.Random(4321)
    trials, hits, misses, kinds = 0, 0, [], []
    for _ in range(4):
        torch.manual_seed(rng.randint(0, 10_000))
        model = RandomNet(rng).eval()
        x = torch.randn(2, 12)
        for position in (rng.random(), rng.random()):
            with monkeypatch.context() as m:
                chosen = nudged_reference(m, position)
                report = backendiff.compare(model, inputs=(x,), backends=[spec], golden=False, use_cache=False,
                                            layerwise="always", isolate=False, advise=False, atol=0.1, rtol=0.1)
            b = report.backends[0]
            assert "layers_error" not in b.info, b.info
            assert spec != "ort:int8" or "DequantizeLinear" in b.info["layers_from"]
            names = {r["node"] for r in b.layers} | {u["node"] for u in b.info.get("unmeasured_layers", [])}
            target = next(t for graph, t in chosen.items() if names <= graph)
            fd = first_divergence(b.layers)
            kinds.append(target.rstrip("0123456789_"))
            fused = {u["node"]: u["fused_into"] for u in b.info.get("unmeasured_layers", [])}
            trials += 1
            if fd is not None and fd["node"] in (target, fused.get(target)):
                hits += 1
            else:
                misses.append((target, fd and fd["node"], fused.get(target)))
    assert trials == 8 and hits == trials, misses
    assert len(set(kinds)) >= 3, kinds                  # several kinds of op were shifted
