"""``keep=MODULE;...``: every kept module is really kept in the artifact that runs.

ONNX Runtime's ``quant_pre_process`` fuses nodes (MatMul+Add into Gemm) and drops the node
metadata that names PyTorch modules; the module names are carried across it, so
``ort:int8,keep=...`` changes which nodes are quantized. A keep that matches nothing is a
one-line error naming the candidates; the result says how many nodes each kept module
covered. Asserted on the saved artifacts, on a small transformer-shaped model."""
import math
import textwrap

import pytest
import torch
from torch import nn

import backendiff
from backendiff import BadInput

from .conftest import needs

QUERY, KEY = "layer.0.attention.query", "layer.0.attention.key"


class Attention(nn.Module):
    def __init__(self, d: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.attention, self.norm1 = Attention(d), nn.LayerNorm(d)
        self.intermediate, self.output, self.norm2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.LayerNorm(d)

    def forward(self, x):
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.output(nn.functional.gelu(self.intermediate(x))))


class Encoder(nn.Module):
    """Two encoder layers with BERT-like submodule names."""

    def __init__(self, d: int = 16):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.layer = nn.ModuleList([Layer(d) for _ in range(2)])
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layer:
            x = layer(x)
        return self.head(x)


def make():
    torch.manual_seed(0)
    return Encoder().eval(), (torch.randn(1, 6, 8),)


@pytest.fixture(scope="module")
def model():
    return make()


def run(model, spec, cache_dir, **options):
    module, inputs = model
    report = backendiff.compare(module, inputs=inputs, backends=[spec], isolate=False, advise=False,
                                layerwise="never", cache_dir=cache_dir, **options)
    b = report.backends[0]
    assert b.status in ("ok", "diverged"), b.error
    return b


def load(path):
    import onnx

    return onnx.load(str(path))


def weight_sources(model, module):
    """For each MatMul/Gemm of ``module`` in the ONNX model: the op types feeding its inputs
    (``init`` for an initializer or graph input)."""
    from backendiff.onnx_graph import node_module

    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.name: [producer.get(i, "init") for i in n.input] for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and node_module(n) == module}


# -- the module names survive ONNX Runtime's quantization pre-processing ------------------------
@needs("ort")
def test_pre_processing_drops_the_names_and_they_are_carried_over(model, tmp_path):
    """Why keep= did nothing: the optimizer of quant_pre_process writes nodes without metadata."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from backendiff.onnx_graph import carry_modules, node_module

    module, inputs = model
    torch.onnx.export(torch.export.export(module, inputs), dynamo=True, optimize=True,
                      verbose=False).save(str(tmp_path / "m.onnx"))
    quant_pre_process(str(tmp_path / "m.onnx"), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
    src, pre = load(tmp_path / "m.onnx"), load(tmp_path / "pre.onnx")
    assert not any(node_module(n) for n in pre.graph.node)   # ONNX Runtime's doing, not ours
    assert any(n.name.endswith("/MatMulAddFusion") for n in pre.graph.node)  # fused: new nodes
    assert carry_modules(src, pre) == len(pre.graph.node)
    gemms = {node_module(n) for n in pre.graph.node if n.op_type in ("Gemm", "MatMul")}
    assert {QUERY, KEY, "embed", "head", "layer.1.output"} <= gemms


@needs("ort")
def test_ort_int8_keep_changes_which_nodes_are_quantized(model, cache_dir):
    plain = run(model, "ort:int8", cache_dir)
    kept = run(model, f"ort:int8,keep={QUERY}", cache_dir)
    before, after = load(plain.info["artifact"]), load(kept.info["artifact"])
    # without keep, the query projection's weights come through DequantizeLinear
    assert all(src == "DequantizeLinear" for srcs in weight_sources(before, QUERY).values() for src in srcs)
    # with it, its Gemm takes float weights and bias, and no DequantizeLinear feeds it
    mine = weight_sources(after, QUERY)
    assert mine and all("DequantizeLinear" not in srcs and srcs[1:] == ["init"] * (len(srcs) - 1)
                        for srcs in mine.values())
    # the key projection next to it is still quantized
    assert all(src == "DequantizeLinear" for srcs in weight_sources(after, KEY).values() for src in srcs)
    assert kept.info["kept"] == {QUERY: 3}   # Reshape, Gemm, Reshape (the fusion's nodes)
    assert "kept" not in plain.info
    assert kept.precision["runtime"] == "mixed"


@needs("ort")
def test_ort_int8_keeps_a_parent_module_whole(model, cache_dir):
    """``layer.1`` covers its submodules, its own functional ops, MatMul+Add pairs the
    pre-processing left unfused (ONNX Runtime fuses them when the session loads) and the
    LayerNorm weights the exporter shares with ``layer.0`` (equal constants merged)."""
    from backendiff.onnx_graph import in_modules, node_module

    b = run(model, "ort:int8,per_channel=false,keep=layer.1;embed", cache_dir)
    assert b.info["kept"]["embed"] == 3 and b.info["kept"]["layer.1"] > 20
    artifact = load(b.info["artifact"])
    producer = {o: n.op_type for n in artifact.graph.node for o in n.output}

    def params(kept: bool):  # what feeds the weights/biases/scales of the compute and norm ops
        return [(n.name, producer.get(i, "init")) for n in artifact.graph.node
                if n.op_type in ("MatMul", "Gemm", "LayerNormalization")
                and in_modules(node_module(n), ["layer.1", "embed"]) == kept for i in n.input[1:]]

    kept, other = params(True), params(False)
    assert len(kept) > 10 and not [p for p in kept if p[1] == "DequantizeLinear"]
    assert {"DequantizeLinear"} == {src for name, src in other if "MatMul" in name}  # layer.0 and head quantized


@needs("ort")
def test_keep_a_modules_own_functional_ops(model, cache_dir):
    """``<MODULE>`` keeps only what the module's forward computes itself (attention's q@k,
    softmax and a@v), not its submodules; the groups the advice draws from partition the
    graph that way; ``<typo>`` is refused with the candidates."""
    from backendiff.onnx_graph import keep_groups, node_module

    b = run(model, "ort:int8,keep=<layer.1.attention>", cache_dir)
    artifact = load(b.info["artifact"])
    producer = {o: n.op_type for n in artifact.graph.node for o in n.output}
    own = {m: [[producer.get(i, "init") for i in n.input] for n in artifact.graph.node
               if n.op_type == "MatMul" and node_module(n) == m] for m in ("layer.0.attention", "layer.1.attention")}
    assert len(own["layer.1.attention"]) == 2 and len(own["layer.0.attention"]) == 2     # q @ k and a @ v
    assert not any("DequantizeLinear" in srcs for srcs in own["layer.1.attention"])
    assert all(srcs == ["DequantizeLinear"] * 2 for srcs in own["layer.0.attention"])
    assert all(src == "DequantizeLinear" for srcs in weight_sources(artifact, QUERY.replace(".0.", ".1."))
               .values() for src in srcs)                                                  # its submodule is not kept
    assert 4 <= b.info["kept"]["<layer.1.attention>"] < 20

    export = load(run(model, "ort", cache_dir).info["artifact"])
    entries = [e for e, _ in keep_groups(export)]
    assert {"<layer.1.attention>", "<layer.1>", "layer.1.attention.query", "embed", "head"} <= set(entries)
    assert "layer.1" not in entries and "layer.1.attention" not in entries
    everything = [n for _, nodes in keep_groups(export, layout=True) for n in nodes]
    assert sorted(everything) == sorted(n.name for n in export.graph.node)             # a partition
    with pytest.raises(BadInput, match="belongs to <layer.1.atention>"):
        run(model, "ort:int8,keep=<layer.1.atention>", cache_dir)


# -- fp16 ------------------------------------------------------------------------------------------
@needs("ort")
def test_ort_fp16_keep_leaves_the_module_in_float32(model, cache_dir):
    import onnx

    from backendiff.onnx_graph import node_module

    b = run(model, "ort:fp16,keep=layer.1.attention", cache_dir)
    artifact = load(b.info["artifact"])
    inits = {i.name: i.data_type for i in artifact.graph.initializer}
    producer = {o: n for n in artifact.graph.node for o in n.output}

    def weight_types(module):
        return [inits[i] for n in artifact.graph.node if node_module(n) == module
                and n.op_type in ("MatMul", "Gemm") for i in n.input if i in inits]

    assert set(weight_types("layer.1.attention.query")) == {onnx.TensorProto.FLOAT}
    assert set(weight_types("layer.0.attention.query")) == {onnx.TensorProto.FLOAT16}
    # inside the kept module every value goes from op to op in fp32: no Cast (to fp16 and back)
    mine = [n for n in artifact.graph.node if node_module(n).startswith("layer.1.attention")]
    assert {"MatMul", "Softmax", "Transpose"} <= {n.op_type for n in mine}
    for n in mine:
        for i in n.input:
            src = producer.get(i)
            if src is not None and src.op_type == "Cast":   # only where a value enters the module
                assert not node_module(producer[src.input[0]]).startswith("layer.1.attention"), n.name
    assert b.info["kept"]["layer.1.attention"] >= 10
    assert b.status == "ok"


# -- a keep that matches nothing -----------------------------------------------------------------
@needs("ort")
@pytest.mark.parametrize("spec", ["ort:int8,keep=no_such_module", f"ort:fp16,keep={QUERY};layer.0.atention"])
def test_a_keep_that_matches_nothing_names_the_candidates(model, cache_dir, spec):
    with pytest.raises(BadInput) as e:
        run(model, spec, cache_dir)
    message = str(e.value)
    assert "\n" not in message
    missing = spec.rpartition(";")[2].rpartition("=")[2]
    assert f"no ONNX node of the export belongs to {missing};" in message
    assert "top level: embed, layer, head" in message and QUERY in message
    if missing == "layer.0.atention":
        assert "closest: layer.0.attention" in message


def test_keep_without_modules_is_refused():
    from backendiff.registry import adapter_class
    from backendiff.specs import parse_spec

    for text, needle in [("ort:int8,keep=;", "module paths separated by ';'"),
                         ("ort:fp32,keep=fc", "applies to ort:fp16, ort:int8"),
                         ("openvino:int8,route=onnx,keep=;", "module paths separated by ';'")]:
        spec = parse_spec(text)
        with pytest.raises(BadInput, match=needle):
            adapter_class(spec.name).canonical(spec)


@needs("ort")
def test_cli_exits_2_with_one_line_naming_the_candidates(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from backendiff.cli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "enc.py").write_text(textwrap.dedent('''
        from tests.test_keep import make
    '''))
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[1]))
    result = CliRunner().invoke(cli, ["compare", "enc.py:make", "--backends", "ort:int8,keep=no_such_module",
                                      "--no-isolate", "--no-cache"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("backendiff: error: keep=no_such_module: ")
    assert "top level: embed, layer, head" in lines[0] and "Traceback" not in result.output


# -- openvino through NNCF's ignored scope ---------------------------------------------------------
@needs("openvino")
def test_openvino_int8_keep_ignores_the_module_and_checks_the_name(model, tmp_path):
    pytest.importorskip("nncf")
    import openvino as ov

    b = run(model, f"openvino:int8,route=onnx,keep={QUERY}", tmp_path)
    assert b.info["kept"] == {QUERY: 2}   # MatMul and Add of the export
    xml = next(tmp_path.glob("compiled/*/*/model.xml"))
    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(xml)).get_ops()}

    def fed_by_fake_quantize(op):
        seen, todo = set(), [op]
        while todo:  # through the weights' Convert/Multiply/Subtract chain
            for port in todo.pop().inputs():
                src = port.get_source_output().get_node()
                if src.get_type_name() == "FakeQuantize":
                    return True
                if src.get_friendly_name() not in seen and src.get_type_name() in ("Convert", "Multiply",
                                                                                     "Subtract", "Reshape"):
                    seen.add(src.get_friendly_name())
                    todo.append(src)
        return False

    matmuls = {name: fed_by_fake_quantize(op) for name, op in ops.items() if op.get_type_name() == "MatMul"}
    export = load(next(tmp_path.glob("onnx/*/*/model.onnx")))
    from backendiff.onnx_graph import nodes_in_modules

    query = set(nodes_in_modules(export, [QUERY])) & set(matmuls)
    key = set(nodes_in_modules(export, [KEY])) & set(matmuls)
    assert query and key
    assert not any(matmuls[n] for n in query) and all(matmuls[n] for n in key)
    with pytest.raises(BadInput, match="no ONNX node of the export belongs to no_such_module; "):
        run(model, "openvino:int8,route=onnx,keep=no_such_module", tmp_path)


# -- the advice only tries what it can keep, and says what it ran --------------------------------
def test_no_fix_only_after_the_all_fp32_run():
    """"No fix" is said with what was run: the candidates kept at once, then the all-fp32 run
    (every op kept). All-fp32 within tolerance: the candidates ran out. All-fp32 still
    outside it: a bug of the tool chain, reported as such."""
    from types import SimpleNamespace

    from backendiff.advice import advise
    from backendiff.specs import parse_spec

    def trials(fp32_ok):
        ran = []

        def trial(spec):
            kept = spec.option("keep").split(";")
            ran.append(kept)
            ok = fp32_ok and set(kept) >= {"a", "b", "<top>", "flatten"}
            return SimpleNamespace(status="ok" if ok else "diverged",
                                   outputs=[SimpleNamespace(metrics={"sqnr_db": 60.0 if ok else 12.0, "max_abs": 1.0})],
                                   info={"kept": {m: 3 for m in kept}}, error=None)
        return trial, ran

    everything = ["a", "b", "<top>", "flatten"]
    trial, ran = trials(fp32_ok=True)
    out = advise(parse_spec("ort:int8"), SimpleNamespace(layers=None), ["a", "b"], trial, everything=everything)
    assert out["found"] is False and "bug" not in out and ran[-1] == everything
    assert "ort:int8,keep=a;b" in out["reason"] and "12.0 dB" in out["reason"]
    assert "with every op kept in fp32 they are within tolerance" in out["reason"]
    assert out["tried"]["kept"] == {"a": 3, "b": 3} and out["all_fp32"]["status"] == "ok"

    trial, ran = trials(fp32_ok=False)
    out = advise(parse_spec("ort:int8"), SimpleNamespace(layers=None), ["a", "b"], trial, everything=everything)
    assert out["found"] is False and out["bug"] is True and "a bug to report" in out["reason"]
    assert out["all_fp32"]["spec"] == "ort:int8,keep=a;b;<top>;flatten"

    trial, ran = trials(fp32_ok=False)   # the candidates are the whole graph: no extra run
    out = advise(parse_spec("ort:int8"), SimpleNamespace(layers=None), ["a", "b"], trial, everything=["a", "b"])
    assert out["bug"] is True and out["all_fp32"] == out["tried"] and ran.count(["a", "b"]) == 1


def test_an_all_fp32_run_that_cannot_run_is_not_called_a_bug():
    """A keep= set the tool chain refuses (seen in the corpus: the advice's all-fp32 set on a
    DINOv2) is a failed trial, said as such; not a tool-chain bug, not the end of the run."""
    from types import SimpleNamespace

    from backendiff.advice import advise
    from backendiff.specs import parse_spec

    def trial(spec):
        kept = spec.option("keep").split(";")
        if len(kept) > 2:
            return SimpleNamespace(status="failed", outputs=[], info={}, error={"message": "keep=...: no node"})
        return SimpleNamespace(status="diverged", outputs=[SimpleNamespace(metrics={"sqnr_db": 12.0, "max_abs": 1.0})],
                               info={"kept": {m: 1 for m in kept}}, error=None)

    out = advise(parse_spec("ort:int8"), SimpleNamespace(layers=None), ["a", "b"], trial,
                 everything=["a", "b", "<top>"])
    assert out["found"] is False and "bug" not in out and "could not run: keep=...: no node" in out["reason"]
