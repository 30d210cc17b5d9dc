import json
import math

from backendiff.report import BackendResult, OutputResult, Report


def make(status="ok", requested=("ort",)):
    out = OutputResult("output", [1, 10], {"max_abs": 1e-6, "mean_abs": 1e-7, "max_rel": 1e-5, "cosine": 1.0,
                                           "sqnr_db": -math.inf, "nonfinite": 0}, status == "ok")
    b = BackendResult(spec="ort", backend="ort", variant="fp32", status=status, outputs=[out])
    return Report(model={"source": "zoo:x"}, reference={"backend": "torch", "precision": "fp32"},
                  environment={}, backends=[b], requested=list(requested))


def test_round_trip_and_strict_json():
    r = make()
    text = r.to_json()
    data = json.loads(text)            # no NaN/Infinity tokens: strict JSON
    assert data["backends"][0]["outputs"][0]["metrics"]["sqnr_db"] is None     # no sentinel such as -999
    back = Report.from_dict(data)
    assert back.to_dict() == data and back.verdict == "pass"


def test_exit_codes():
    assert make("ok").exit_code == 0 and make("ok")
    assert make("diverged").exit_code == 1 and not make("diverged")
    assert make("unavailable").exit_code == 3
    assert make("failed").exit_code == 3
    # not requested by name (default set): an unavailable backend does not fail the run...
    r = make("unavailable", requested=())
    r.backends.append(make("ok").backends[0])
    assert r.exit_code == 0
