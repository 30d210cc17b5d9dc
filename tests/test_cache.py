"""A second identical run takes exported and compiled artifacts from the cache."""
import pytest

import backendiff

from .conftest import available


@pytest.mark.parametrize("backend", ["ort", "openvino", "tvm"])
def test_second_run_hits_the_cache(tmp_path, backend):
    if not available(backend):
        pytest.skip(f"{backend} not installed")
    first = backendiff.compare("zoo:digits-cnn-narrow", backends=[backend], cache_dir=tmp_path)
    second = backendiff.compare("zoo:digits-cnn-narrow", backends=[backend], cache_dir=tmp_path)
    a, b = first.backend(backend), second.backend(backend)
    assert a.status == b.status == "ok"
    assert a.outputs[0].metrics == b.outputs[0].metrics
    assert (a.cache, b.cache) == ("miss", "hit")  # ORT's cached artifact is the ONNX export
    assert "torch_export_s" in first.timings and "torch_export_s" not in second.timings
    off = backendiff.compare("zoo:digits-cnn-narrow", backends=[backend], cache_dir=tmp_path, use_cache=False)
    assert off.backend(backend).cache == "off" and "torch_export_s" in off.timings


def test_changed_weights_change_the_key(tmp_path):
    import torch

    from backendiff.loading import module_key
    from backendiff.models import ZOO

    m = ZOO["digits-cnn-narrow"].build()
    k = module_key(m)
    with torch.no_grad():
        m.classifier.bias[0] += 1
    assert module_key(m) != k
