"""The bad input catalogue: each a clear one-line error and exit code 2, never a traceback,
through the real command line (a subprocess for the files, so that nothing torch or a
runtime prints reaches the user either)."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backendiff.models.train_digits import load_digits_split


def backendiff(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "backendiff", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def one_line(proc, needle):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("backendiff: error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    ep = torch.export.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),))
    torch.export.save(ep, d / "m.pt2")
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), d / "m.onnx", dynamo=True)
    for name in ("m.pt2", "m.onnx"):
        data = (d / name).read_bytes()
        (d / f"trunc-{name}").write_bytes(data[: len(data) // 3])
    for suffix in ("pt", "pt2", "onnx"):
        (d / f"empty.{suffix}").write_bytes(b"")
    (d / "text.pt").write_text("this is not a model\n")
    np.savez(d / "missing.npz", other=np.zeros((1, 3, 8, 8), np.float32))
    np.savez(d / "extra.npz", input=np.zeros((1, 3, 8, 8), np.float32), more=np.zeros(3, np.float32))
    (d / "emptyset").mkdir()
    (d / "noimages" / "cat").mkdir(parents=True)
    return d


CATALOGUE = [
    ("missing model file", ["compare", "{d}/nope.pt2"], "model file not found"),
    ("empty .pt", ["compare", "{d}/empty.pt"], "model file is empty"),
    ("empty .pt2", ["compare", "{d}/empty.pt2"], "model file is empty"),
    ("empty .onnx", ["compare", "{d}/empty.onnx"], "model file is empty"),
    ("truncated .pt2", ["compare", "{d}/trunc-m.pt2"], "cannot read"),
    ("truncated .onnx", ["compare", "{d}/trunc-m.onnx"], "cannot read"),
    ("wrong format", ["compare", "{d}/text.pt"], "text.pt"),
    ("input shape", ["compare", "{d}/m.pt2", "--input", "input:1x3x9x9"], "has shape (1, 3, 9, 9) but the model expects"),
    ("input dtype", ["compare", "{d}/m.pt2", "--input", "input:1x3x8x8:int64"], "has dtype int64 but the model expects"),
    ("--inputs missing name", ["compare", "{d}/m.pt2", "--inputs", "{d}/missing.npz"], "missing input"),
    ("--inputs extra name", ["compare", "{d}/m.pt2", "--inputs", "{d}/extra.npz"], "unexpected more"),
    ("unknown backend", ["compare", "{d}/m.pt2", "--backends", "tflite"], "unknown backend 'tflite'"),
    ("unknown variant", ["compare", "{d}/m.pt2", "--backends", "ort:int4"], "unknown variant 'int4'"),
    ("malformed option", ["compare", "{d}/m.pt2", "--backends", "ort,threads=-1"], "bad value '-1' for option 'threads'"),
    ("unknown option", ["compare", "{d}/m.pt2", "--backends", "ort,speed=max"], "unknown option 'speed'"),
    ("malformed --timeout", ["compare", "{d}/m.pt2", "--timeout", "compile=soon"], "is not a number of seconds"),
    ("unwritable output", ["compare", "{d}/m.pt2", "--json", "/proc/none/r.json"], "cannot write report"),
    ("unwritable html", ["compare", "{d}/m.pt2", "--html", "/proc/none/r.html"], "cannot write report"),
    ("empty dataset folder", ["compare", "zoo:digits-cnn", "--data", "{d}/emptyset"], "no class sub-folders"),
    ("dataset without images", ["compare", "zoo:digits-cnn", "--data", "{d}/noimages"], "no images"),
    ("missing dataset", ["compare", "zoo:digits-cnn", "--data", "{d}/nodata"], "not found"),
]


# model files go through a real process (what torch itself prints must not reach the user
# either); the rest in-process, which is faster and sees the same one line
IN_PROCESS = {"input shape", "input dtype", "--inputs missing name", "--inputs extra name", "unknown backend",
              "unknown variant", "malformed option", "unknown option", "malformed --timeout", "unwritable output",
              "unwritable html", "empty dataset folder", "dataset without images", "missing dataset"}


@pytest.mark.parametrize("name, args, needle", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_catalogue(files, name, args, needle):
    args = [a.format(d=files) for a in args]
    args += [] if "--json" in args else ["--no-json"]
    if name not in IN_PROCESS:
        one_line(backendiff(*args), needle)
        return
    from click.testing import CliRunner

    from backendiff.cli import cli

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("backendiff: error: ") and needle in lines[0], result.stderr


def test_nan_in_user_inputs_is_warned_and_still_run(tmp_path):
    _, _, x, _ = load_digits_split()
    batch = x[:8].copy()
    batch[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=batch)
    proc = backendiff("compare", "zoo:digits-cnn", "--inputs", tmp_path / "nan.npz", "--backends", "torch",
                      "--json", tmp_path / "r.json", "--no-task")
    assert proc.returncode == 0, proc.stderr
    assert "warning: inputs x hold NaN/Inf; run as given" in proc.stdout
    assert '"nonfinite_inputs": [\n      "x"\n    ]' in (tmp_path / "r.json").read_text()


@pytest.fixture(scope="module")
def real_model_bytes(files):
    return {name: (files / name).read_bytes() for name in ("m.pt2", "m.onnx")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".pt", ".pt2", ".onnx", ".pth", ".bin"]),
       source=st.sampled_from(["random", "m.pt2", "m.onnx"]),
       cut=st.floats(0.0, 0.999), noise=st.binary(min_size=0, max_size=256))
def test_random_and_truncated_model_files_never_give_a_traceback(tmp_path_factory, real_model_bytes, suffix, source,
                                                                 cut, noise):
    """Random bytes, and real model files cut short (with random bytes after the cut), under
    any model suffix: always exit 2 with one line, in-process (no subprocess per example)."""
    from click.testing import CliRunner

    from backendiff.cli import cli

    data = noise if source == "random" else real_model_bytes[source][: int(len(real_model_bytes[source]) * cut)] + noise
    path = tmp_path_factory.mktemp("fuzz") / f"model{suffix}"
    path.write_bytes(data)
    result = CliRunner().invoke(cli, ["compare", str(path), "--backends", "torch", "--no-json", "--no-isolate",
                                      "--input", "input:1x3x8x8"])
    assert result.exit_code == 2, (result.output, repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("backendiff: error: "), result.stderr
