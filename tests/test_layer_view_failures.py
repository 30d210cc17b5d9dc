"""A layer view that fails stays inside that backend's result: the outputs measured, the
other backends and the report are kept (before, a failing --isolate-layers ended the run in
a traceback with no report)."""
import torch

import backendiff

from .conftest import needs


class ConvNeXtish(torch.nn.Module):
    """A ConvNeXt-style block: depthwise conv, channels-last permute, LayerNorm, MLP, permute
    back, residual."""

    def __init__(self, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, dim, 4, stride=4)
        self.dw = torch.nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.pw1 = torch.nn.Linear(dim, 4 * dim)
        self.pw2 = torch.nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(torch.nn.functional.gelu(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + y


INPUT = (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


@needs("ort", "openvino", "tvm")
def test_permute_blocks_have_no_false_suspects_and_isolation_completes():
    """fp32 layer rows around permutes stay with their neighbours (values compared in the
    reference's layout), and --isolate-layers completes on every backend."""
    report = backendiff.compare(ConvNeXtish(), inputs=INPUT, layerwise="always", isolate_layers=True,
                                use_cache=False, backends=["ort", "openvino", "openvino:fp32,route=onnx", "tvm",
                                                           "tvm:fp32,route=onnx"])
    for b in report.backends:
        assert b.status == "ok" and "isolated_error" not in b.info and "layers_error" not in b.info, b.spec
        sq = [r["metrics"]["sqnr_db"] for r in b.layers if r["metrics"]["sqnr_db"] is not None]
        assert sq and min(sq) > 100, (b.spec, sq)          # no row far below the rest
        if b.route == "onnx":
            assert all("isolated" in r for r in b.layers), b.spec
        else:                                              # the export routes say they have no isolated view
            assert "not on this route yet" in b.info["isolated"], b.spec


@needs("ort")
def test_a_failing_isolated_view_is_recorded_not_raised(monkeypatch):
    from backendiff.backends.ort import OrtAdapter

    def boom(self, model, sample, reference):
        raise ValueError("got [1,7,7,768] expecting [1,768,1,1]")

    monkeypatch.setattr(OrtAdapter, "isolated_values", boom)
    report = backendiff.compare(ConvNeXtish(), inputs=INPUT, backends=["ort", "torch"], layerwise="always",
                                isolate_layers=True, use_cache=False, isolate=False)
    ort = report.backend("ort")
    assert ort.status == "ok" and ort.outputs and ort.layers            # the propagated rows stand
    assert ort.info["isolated_error"] == "ValueError: got [1,7,7,768] expecting [1,768,1,1]"
    assert report.backend("torch").status == "ok" and report.exit_code == 0


@needs("ort")
def test_any_layer_view_failure_keeps_the_backend_result(monkeypatch):
    import backendiff.layers as L

    def boom(*args, **kwargs):
        raise RuntimeError("alignment failed")

    monkeypatch.setattr(L, "mark_fused", boom)
    report = backendiff.compare(ConvNeXtish(), inputs=INPUT, backends=["ort"], layerwise="always",
                                use_cache=False, isolate=False)
    ort = report.backend("ort")
    assert ort.status == "ok" and ort.outputs[0].metrics["max_abs"] < 1e-4
    assert ort.info["layers_error"] == "RuntimeError: alignment failed" and report.exit_code == 0


def test_a_value_in_another_dimension_order_is_brought_back_not_a_suspect():
    """A runtime that hands back a permute's value as its channels-first buffer under the
    channels-last shape (the ConvNeXt case: −18 dB rows between 47 dB neighbours) is
    compared in the reference's order; a real error next to it stays a suspect."""
    import numpy as np

    from backendiff.layers import first_divergence, graph_layers, layer_rows, realign, record_nodes

    graph_module = torch.export.export(ConvNeXtish().eval(), INPUT).module()
    layers, reference = graph_layers(graph_module), record_nodes(graph_module, list(INPUT))
    rng = np.random.default_rng(0)
    noisy = {k: v + rng.normal(0, 1e-4, v.shape).astype(np.float32) * np.abs(v).mean() for k, v in reference.items()}
    permutes = [layer.node for layer in layers if layer.op_type == "permute"]
    assert len(permutes) == 2
    actual = dict(noisy)
    for node in permutes:             # the buffer in the order before the permute, shape after it
        nhwc = noisy[node]
        back = np.argsort([0, 2, 3, 1]) if node == permutes[0] else np.argsort([0, 3, 1, 2])
        actual[node] = np.ascontiguousarray(nhwc.transpose(back)).reshape(nhwc.shape)
    rows = layer_rows(layers, reference, actual, 1e-3, 1e-3)
    by_node = {r["node"]: r for r in rows}
    sq = [r["metrics"]["sqnr_db"] for r in rows]
    assert max(sq) - min(sq) < 10, sq                            # no row far below its neighbours
    assert all("layout" in by_node[n] for n in permutes) and first_divergence(rows) is None
    assert sum("layout" in r for r in rows) == 2

    wrong = dict(noisy)                                            # a real error is not explained away
    wrong[permutes[0]] = noisy[permutes[0]] + rng.normal(0, 1.0, noisy[permutes[0]].shape).astype(np.float32)
    rows = layer_rows(layers, reference, wrong, 1e-3, 1e-3)
    assert first_divergence(rows)["node"] == permutes[0] and not any("layout" in r for r in rows)
    assert realign(wrong[permutes[0]], reference[permutes[0]]) is None
