"""Precision variants run for real on each runtime; the error ordering is measured; each
variant is judged with its own tolerance; the report says what precision really ran."""
import numpy as np
import pytest
import torch

import backendiff
from backendiff.tolerance import DEFAULTS

from .conftest import available

VARIANTS = {
    "ort": ["ort", "ort:fp16", "ort:int8"],
    "openvino": ["openvino", "openvino:fp16", "openvino:int8"],
    "tvm": ["tvm", "tvm:fp16"],
    "torch": ["torch:fp16", "torch:bf16"],
}


def run_variants(model: str):
    specs = [s for name, group in VARIANTS.items() if available(name) for s in group]
    return backendiff.compare(model, backends=specs, calib_samples=16)


def sqnr(report, spec):
    value = report.backend(spec).outputs[0].metrics["sqnr_db"]
    return float("inf") if value is None else value


@pytest.fixture(scope="module", params=["zoo:digits-cnn", "zoo:tiny-transformer"])
def report(request):
    return run_variants(request.param)


def test_error_grows_fp32_fp16_int8(report):
    for name, group in VARIANTS.items():
        if not available(name) or name == "torch":
            continue
        values = [sqnr(report, spec) for spec in group]
        assert values == sorted(values, reverse=True), (name, values)
        assert values[0] > 100                 # fp32: rounding noise only
        assert 40 < values[1] < 90             # fp16: about 11 bits
        if len(values) > 2:
            assert 15 < values[2] < 50         # int8


def test_each_variant_is_judged_with_its_own_tolerance(report):
    for result in report.backends:
        precision = result.variant
        assert result.tolerance == DEFAULTS[precision].to_dict(), result.spec
        violations = sum(o.violations for o in result.outputs)
        assert result.status == ("ok" if violations == 0 else "diverged")
    # fp16 results that would fail the fp32 tolerance pass their own: judging by precision matters
    assert any(b.variant == "fp16" and b.status == "ok" and b.outputs[0].metrics["max_abs"] > DEFAULTS["fp32"].atol
               for b in report.backends)


def test_precision_read_back(report):
    if available("ort"):
        ort16 = report.backend("ort:fp16")
        assert ort16.precision["requested"] == "fp16" and ort16.info["runtime_precisions"]
        int8 = report.backend("ort:int8").info["runtime_precisions"]
        assert int8.get("int8", 0) > 0
    if available("openvino"):
        ov8 = report.backend("openvino:int8").info["runtime_precisions"]
        assert ov8.get("int8", 0) > 0
        assert report.backend("openvino").precision["runtime"] == "fp32"
    if available("tvm"):
        assert report.backend("tvm:fp16").info["runtime_precisions"].get("fp16", 0) > 0
    # a zoo model with training data calibrates on it; the others on seeded random batches
    source = "zoo" if report.model["source"] == "zoo:digits-cnn" else "random"
    assert report.calibration["source"] == source and report.calibration["samples"] == 16


def test_zoo_calibration_is_training_data_shaped_like_the_inputs():
    from backendiff.compare import zoo_calibration
    from backendiff.models.train_digits import load_digits_split

    sample = {"x": np.zeros((8, 1, 8, 8), np.float32)}
    calib, info = zoo_calibration("digits-cnn", sample, 5)
    assert info == {"source": "zoo", "split": "zoo:digits-cnn training split"}
    assert len(calib) == 5 and all(c["x"].shape == (8, 1, 8, 8) and c["x"].dtype == np.float32 for c in calib)
    x_train, _, x_test, _ = load_digits_split()
    train = {r.tobytes() for r in x_train}
    rows = [r for c in calib for r in c["x"]]
    assert len({r.tobytes() for r in rows}) == 40 and all(r.tobytes() in train for r in rows)
    assert not {r.tobytes() for r in rows} & {r.tobytes() for r in x_test}.difference(train)
    assert zoo_calibration("tiny-transformer", {"tokens": np.zeros((2, 16, 32), np.float32)}, 4) is None
    assert zoo_calibration(None, sample, 4) is None


def Overflow():
    """A layer whose activations reach ~4e5, past fp16's 65504 (the zoo's fp16-overflow)."""
    from backendiff.models import ZOO

    return ZOO["fp16-overflow"].build()


def test_fp16_overflow():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    specs = ["torch:fp16"] + [s for s in ("tvm:fp16", "ort:fp16", "openvino:fp16") if available(s.split(":")[0])]
    report = backendiff.compare(Overflow().eval(), inputs=(x,), backends=specs)
    for spec in ("torch:fp16", "tvm:fp16"):
        if spec in specs:
            b = report.backend(spec)
            assert b.status == "diverged" and b.outputs[0].metrics["nonfinite"] > 0
            assert b.outputs[0].metrics["sqnr_db"] is None and b.outputs[0].metrics["nonfinite_mismatch"] > 0
    for spec in ("ort:fp16", "openvino:fp16"):
        if spec in specs:
            b = report.backend(spec)
            # the report states what the runtime actually used for this model
            assert b.precision["runtime"] in ("fp32", "fp16", "mixed") and b.info["runtime_precisions"]
    if "ort:fp16" in specs:  # ORT's CPU provider runs this fp16 model's ops in fp32: no overflow
        assert report.backend("ort:fp16").precision == {"requested": "fp16", "runtime": "fp32", "honoured": False}
        assert report.backend("ort:fp16").outputs[0].metrics["nonfinite"] == 0


@pytest.mark.skipif(not available("ort"), reason="onnxruntime not installed")
def test_calibration_from_file_changes_the_artifact(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=rng.uniform(0, 1, (16, 8, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "zeros.npz", x=np.zeros((2, 8, 1, 8, 8), np.float32))
    a = backendiff.compare("zoo:digits-cnn-narrow", backends=["ort:int8"], calib_files=(tmp_path / "calib.npz",),
                           cache_dir=tmp_path / "c")
    b = backendiff.compare("zoo:digits-cnn-narrow", backends=["ort:int8"], calib_files=(tmp_path / "zeros.npz",),
                           cache_dir=tmp_path / "c")
    assert a.calibration["source"] == "file" and a.calibration["samples"] == 16
    assert b.calibration["samples"] == 2
    assert a.backend("ort:int8").cache == b.backend("ort:int8").cache == "miss"
    # calibrated on real-range data vs on zeros: very different quantization
    assert sqnr(a, "ort:int8") > sqnr(b, "ort:int8") + 10


def test_openvino_bf16_unavailable_without_cpu_support(monkeypatch):
    if not available("openvino"):
        pytest.skip("openvino not installed")
    import openvino as ov

    real = ov.Core.get_property

    def no_bf16(self, *args):
        value = real(self, *args)
        return [c for c in value if c != "BF16"] if args[-1] == "OPTIMIZATION_CAPABILITIES" else value

    monkeypatch.setattr(ov.Core, "get_property", no_bf16)
    report = backendiff.compare("zoo:digits-cnn-narrow", backends=["openvino:bf16", "torch"])
    b = report.backend("openvino:bf16")
    assert b.status == "unavailable" and "no bf16 support" in b.error["message"]
    assert report.exit_code == 3


def test_spec_text_is_kept_as_written():
    report = backendiff.compare("zoo:digits-cnn-narrow", backends=["torch:fp16,mode=autocast"])
    b = report.backend("torch:fp16,mode=autocast")
    assert b.variant == "fp16" and b.options == {"mode": "autocast"}
