"""A backend that crashes, hangs or raises costs nothing but its own result."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import backendiff
from backendiff import BadInput
from backendiff.backends.pytorch import TorchAdapter
from backendiff.isolation import death_message, parse_limits
from backendiff.registry import register_backend, unregister_backend

from .conftest import needs
from .sweep_plugin import Segfaults  # also a sweep's --plugin: the same backend in every worker


class Killed(TorchAdapter):
    """Test-only: killed with SIGKILL while compiling, as the out-of-memory killer does."""

    name = "killed"

    def compile(self, module, folder):
        os.kill(os.getpid(), signal.SIGKILL)


class Hangs(TorchAdapter):
    """Test-only: never finishes compiling."""

    name = "hangs"

    def compile(self, module, folder):
        time.sleep(3600)


class Raises(TorchAdapter):
    """Test-only: the runtime rejects the model while converting."""

    name = "raises"

    def convert(self, model, folder):
        raise RuntimeError("Unsupported operator: aten::frobnicate")


@pytest.fixture
def misbehaving():
    for cls in (Segfaults, Hangs, Raises, Killed):
        register_backend(cls, replace=True)
    yield
    for cls in (Segfaults, Hangs, Raises, Killed):
        unregister_backend(cls.name)


@needs("ort")
def test_crash_hang_and_error_beside_ort(misbehaving):
    t0 = time.perf_counter()
    report = backendiff.compare("zoo:digits-cnn", backends=["segfaults", "ort", "hangs", "raises", "killed"],
                                timeout="compile=4")
    assert time.perf_counter() - t0 < 120
    by = {b.spec: b for b in report.backends}
    assert by["ort"].status == "ok" and by["ort"].task["value"] > 98 and by["ort"].outputs
    seg = by["segfaults"]
    assert seg.status == "crashed" and seg.error["stage"] == "run" and seg.error["signal"] == "SIGSEGV"
    assert "segmentation fault" in seg.error["message"] and seg.timings["compile_s"] >= 0
    hang = by["hangs"]
    assert hang.status == "timeout" and hang.error["stage"] == "compile" and hang.error["limit_s"] == 4
    assert 4 <= hang.timings["compile_s"] < 30
    err = by["raises"]
    assert err.status == "failed" and err.error["stage"] == "convert" and "aten::frobnicate" in err.error["message"]
    killed = by["killed"]
    assert killed.status == "crashed" and killed.error["signal"] == "SIGKILL" and killed.error["stage"] == "compile"
    assert "out-of-memory killer" in killed.error["message"]
    assert report.exit_code == 3 and report.verdict == "fail"


def test_without_isolation_the_same_errors_are_data(misbehaving):
    report = backendiff.compare("zoo:digits-cnn", backends=["raises", "torch"], isolate=False)
    assert report.backend("raises").status == "failed" and report.backend("torch").status == "ok"


def test_timeout_option_and_death_messages():
    assert parse_limits("30")["compile"] == 30 and parse_limits("run=5,compile=7")["run"] == 5
    assert parse_limits(None)["compile"] == 900
    for bad, message in (("abc", "not a number"), ("link=3", "unknown stage 'link'"), ("-1", "must be positive")):
        with pytest.raises(BadInput, match=message):
            parse_limits(bad)
    assert "out-of-memory killer" in death_message(-signal.SIGKILL, "compile")[0]
    assert death_message(3, "run") == ("the worker process exited with code 3 during run without a result", None)


SLOW_BACKEND = textwrap.dedent('''
    import time
    from backendiff.backends.pytorch import TorchAdapter

    class Slowpoke(TorchAdapter):
        name = "slowpoke"

        def compile(self, module, folder):
            time.sleep(3600)
''')


@needs("ort")
def test_a_killed_run_leaves_a_partial_report(tmp_path):
    """A real `backendiff compare` process is killed while its second backend hangs: the
    first backend's result is in the partial log, and `backendiff report` renders it."""
    (tmp_path / "slowpoke_backend.py").write_text(SLOW_BACKEND)
    dist = tmp_path / "slowpoke-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slowpoke\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[backendiff.backends]\nslowpoke = slowpoke_backend:Slowpoke\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "run.json"
    proc = subprocess.Popen([sys.executable, "-m", "backendiff", "compare", "zoo:digits-cnn", "--backends",
                             "ort,slowpoke,openvino", "--json", str(out), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = tmp_path / "run.partial.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and '"spec": "ort"' in log.read_text():
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("ort never finished")
    proc.kill()                          # SIGKILL: nothing of backendiff's own gets to clean up
    proc.wait()
    assert not out.exists()
    time.sleep(1)                        # the worker hanging in slowpoke dies with its parent
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert left == [], "a worker outlived its killed parent"
    shown = subprocess.run([sys.executable, "-m", "backendiff", "report", str(log), "--md", str(tmp_path / "p.md")],
                           capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 3, shown.stderr
    md = (tmp_path / "p.md").read_text()
    assert "incomplete" in md and "`ort` | ok" in md and "never finished: `slowpoke`, `openvino`" in md
    shown = subprocess.run([sys.executable, "-m", "backendiff", "report", str(log)], capture_output=True, text=True,
                           env=env, timeout=120)
    assert "partial run: 1 of 3 backends finished; never finished: slowpoke, openvino" in shown.stdout
    assert json.loads(log.read_text().splitlines()[1])["status"] == "ok"


@needs("ort")
def test_nan_where_the_reference_has_nan_passes_unless_strict():
    import torch

    class LogOfInput(torch.nn.Module):
        def forward(self, x):
            return torch.log(x)            # NaN for the negative inputs, in every runtime

    x = torch.tensor([[-1.0, 0.5, 2.0, -3.0]])
    lenient = backendiff.compare(LogOfInput(), inputs=(x,), backends=["ort"])
    assert lenient.backend("ort").status == "ok" and lenient.backend("ort").outputs[0].metrics["nonfinite"] == 2
    strict = backendiff.compare(LogOfInput(), inputs=(x,), backends=["ort"], nan_strict=True)
    assert strict.backend("ort").status == "diverged" and strict.exit_code == 1
