"""Heavy checks (`make test-heavy`): every zoo model on every CPU route, ResNet-18 at 224."""
import pytest

import backendiff

from .conftest import available

pytestmark = pytest.mark.slow

ROUTES = ["ort", "openvino", "tvm", "openvino:fp32,route=onnx", "tvm:fp32,route=onnx"]


@pytest.mark.parametrize("model", ["digits-cnn", "tiny-transformer", "resnet18", "mini-pose"])
def test_zoo_model_on_every_route(model):
    specs = [s for s in ROUTES if available(s.split(":")[0].split(",")[0])]
    report = backendiff.compare(f"zoo:{model}", backends=specs, samples=2)
    for b in report.backends:
        if model == "mini-pose" and b.spec == "tvm":
            # apache-tvm 0.27's ExportedProgram importer rejects max_pool2d without an explicit
            # stride (PyTorch's default stride=kernel_size): a real converter failure, reported
            assert b.status == "failed" and b.error["stage"] == "convert" and "strides" in b.error["message"]
            continue
        assert b.status == "ok", (b.spec, b.error)
        assert b.outputs[0].metrics["cosine"] > 0.99999
