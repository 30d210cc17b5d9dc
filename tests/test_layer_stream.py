"""The layer view in bounded memory (#20): each layer's reference value is compared with the
backend's as it is made and dropped, and ONNX Runtime captures the backend's values in
chunks of layers over several runs of one instrumented session when they do not fit."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import backendiff
from backendiff.cli_options import parse_size
from backendiff.errors import BadInput
from backendiff.layers import ChunkedValues, Rows, RowsAhead, chunks_within, graph_layers, layer_rows, record_nodes, walk_nodes

from .conftest import needs


class Deep(torch.nn.Module):
    """Convolutions of one width, ``depth`` deep, with a batch norm and an activation each."""

    def __init__(self, depth=6, width=16):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, width, 3, padding=1)
        self.body = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(width, width, 3, padding=1),
                                                              torch.nn.BatchNorm2d(width), torch.nn.GELU())
                                          for _ in range(depth)])
        self.head = torch.nn.Linear(width, 5)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_streamed_rows_are_the_rows_of_held_values():
    """``Rows`` fed as the reference walks (values dropped) gives the rows and unmeasured
    layers of every value held at once, on a backend that is off at one layer and lacks another."""
    gm = torch.export.export(Deep().eval(), (X,)).run_decompositions().module()
    layers = graph_layers(gm)
    reference = record_nodes(gm, (X,))
    floats = [layer.node for layer in layers if reference.get(layer.node) is not None
              and reference[layer.node].dtype == np.float32 and reference[layer.node].ndim == 4]
    actual = dict(reference)
    actual[floats[3]] = actual[floats[3]] + 0.5              # off from here on
    del actual[floats[5]]                                    # no value for this one
    held = layer_rows(layers, reference, actual, 1e-4, 1e-4)
    streamed, by_node = Rows(layers, set(actual), 1e-4, 1e-4), {layer.node: layer for layer in layers}
    walk_nodes(gm, (X,), on_value=lambda node, r: streamed.add(by_node[node], r, actual.get(node)))
    assert streamed.rows == held and len(held) > 10
    assert [u["node"] for u in streamed.unmeasured] == [floats[5]]
    # compared on a second thread while the walk goes on (views handed over): the same rows
    ahead = RowsAhead(Rows(layers, set(actual), 1e-4, 1e-4), ahead=3)
    walk_nodes(gm, (X,), on_value=lambda node, r: ahead.add(by_node[node], r, actual.get(node)), copy=False)
    assert ahead.finish().rows == held
    assert next(r for r in held if not r["within_tolerance"])["node"] == floats[3]


def test_chunks_hold_at_most_the_budget_and_run_once_each_in_order():
    names, sizes = ["a", "b", "c", "d", "e"], {"a": 4, "b": 4, "c": 10, "d": 1, "e": 1}
    assert chunks_within(names, sizes, 8) == [["a", "b"], ["c"], ["d", "e"]]   # c alone: larger than the budget
    ran = []
    values = ChunkedValues(lambda chunk: ran.append(chunk) or {n: n.upper() for n in chunk},
                           chunks_within(names, sizes, 8))
    assert [values.get(n) for n in names] == ["A", "B", "C", "D", "E"] and values.get("z") is None
    assert ran == [["a", "b"], ["c"], ["d", "e"]] and values.runs == 3 and values.names == set(names)


@needs("ort")
def test_ort_captures_layers_in_chunks_with_the_rows_of_one_capture():
    """A budget too small for the model's values (--max-memory 1 byte: chunks of 1 MiB) takes
    several runs of the instrumented session; the layer rows equal those of one capture."""
    kw = dict(inputs=(X,), backends=["ort"], layerwise="always", use_cache=False, isolate=False, golden=False)
    one = backendiff.compare(Deep(12).eval(), **kw).backends[0]
    chunked = backendiff.compare(Deep(12).eval(), max_memory=1, **kw).backends[0]
    assert one.info["layer_capture"]["runs"] == 1
    assert chunked.info["layer_capture"]["runs"] >= 3 and chunked.info["layer_capture"]["chunk_mb"] == 1.0
    assert len(one.layers) > 30
    assert [(r["node"], r["metrics"]) for r in chunked.layers] == [(r["node"], r["metrics"]) for r in one.layers]


def test_sizes_are_read_as_a_user_writes_them():
    assert parse_size("4GB", "--max-memory") == 4 << 30
    assert parse_size("512MB", "--max-memory") == 512 << 20
    assert parse_size("1.5g", "--max-memory") == 3 << 29
    assert parse_size("2048", "--max-memory") == 2048
    for bad in ("lots", "4 parsecs", "0", "-1GB"):
        with pytest.raises(BadInput):
            parse_size(bad, "--max-memory")


def test_a_bad_max_memory_is_a_one_line_error():
    done = subprocess.run([sys.executable, "-m", "backendiff", "compare", "zoo:mlp", "-b", "ort", "--max-memory",
                           "lots"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--max-memory 'lots'" in done.stderr


@needs("ort")
def test_the_deployed_session_is_let_go_before_the_layer_view_builds_its_own():
    """ORT's compiled model drops its session when its runs are done: the layer view's
    instrumented session would otherwise sit beside a second copy of the weights."""
    from backendiff.backends.ort import OrtAdapter

    seen = {}
    real = OrtAdapter.layer_source

    def spy(self, model, sample, budget):
        seen["deployed_session"] = self.deployed.session
        return real(self, model, sample, budget)

    OrtAdapter.layer_source = spy
    try:
        report = backendiff.compare(Deep(2).eval(), inputs=(X,), backends=["ort"], layerwise="always",
                                    use_cache=False, isolate=False, golden=False)
    finally:
        OrtAdapter.layer_source = real
    assert report.backends[0].layers and seen == {"deployed_session": None}


def test_programs_made_from_the_export_share_its_weights_and_compute_the_same():
    """A decomposed or cached program holds the model's weights once: the copy a
    decomposition consumes shares the export's tensors, and a program read back from the
    cache takes the export's tensor wherever its own is equal (never where it differs)."""
    import io

    from backendiff.artifacts import sharing_weights_of
    from backendiff.layers import copy_sharing_weights

    model = Deep(2).eval()
    ep = torch.export.export(model, (X,))
    decomposed = copy_sharing_weights(ep).run_decompositions()
    assert all(decomposed.state_dict[k] is v for k, v in ep.state_dict.items())
    assert torch.equal(decomposed.module()(X), model(X))
    buffer = io.BytesIO()
    torch.export.save(decomposed, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    name = "head.weight"
    with torch.no_grad():
        loaded.state_dict[name].add_(1.0)                  # one weight that is not the export's
    shared = sharing_weights_of(loaded, ep)
    assert shared.state_dict[name] is not ep.state_dict[name]
    assert all(shared.state_dict[k] is v for k, v in ep.state_dict.items() if k != name)
