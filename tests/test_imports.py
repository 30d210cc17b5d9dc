"""Every module of the project imports without any runtime installed (tested by blocking
the runtimes' imports in a fresh interpreter), and a missing runtime is reported as
unavailable with its install hint."""
import json
import subprocess
import sys

BLOCK = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"onnxruntime", "openvino", "tvm", "tensorrt", "cv2", "iree"}:
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""

MODULES = [
    "backendiff", "backendiff.cli", "backendiff.compare", "backendiff.model", "backendiff.loading",
    "backendiff.render", "backendiff.report", "backendiff.registry", "backendiff.cache", "backendiff.localize",
    "backendiff.layers", "backendiff.advice", "backendiff.bisect", "backendiff.tasks", "backendiff.precision",
    "backendiff.imagefolder", "backendiff.charts", "backendiff.html", "backendiff.markdown", "backendiff.isolation",
    "backendiff.partial", "backendiff.diagnose", "backendiff.noise", "backendiff.sysnoise", "backendiff.runner",
    "backendiff.chatter",
    "backendiff.backends.base", "backendiff.backends.ort", "backendiff.backends.openvino",
    "backendiff.backends.tvm", "backendiff.backends.trt", "backendiff.backends.pytorch", "backendiff.backends.iree",
    "backendiff.backends.inductor", "backendiff.triage", "backendiff.ops", "backendiff.models",
]


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=300)


def test_every_module_imports_without_runtimes():
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES) + "print('ok')"
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_missing_runtimes_are_unavailable_with_install_hint():
    code = ("import json\nfrom backendiff.registry import adapter_class\n"
            "print(json.dumps({n: adapter_class(n).availability().__dict__ for n in ['ort','openvino','tvm','torch','iree']},"
            " default=list))")
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows["ort"]["available"] is False
    assert "onnxruntime is not installed" in rows["ort"]["reason"]
    assert rows["ort"]["hint"] == "pip install 'backendiff[ort]'"
    assert rows["openvino"]["hint"] == "pip install 'backendiff[openvino]'"
    assert "apache-tvm is not installed" in rows["tvm"]["reason"]
    assert rows["torch"]["available"] is True
    assert rows["iree"]["available"] is False and rows["iree"]["hint"] == "pip install 'backendiff[iree]'"


def test_compare_goes_on_when_a_requested_runtime_is_missing(tmp_path):
    code = (
        "import backendiff\n"
        "r = backendiff.compare('zoo:digits-cnn', backends=['ort', 'torch'], use_cache=False)\n"
        "print(r.backend('ort').status, r.backend('ort').error['hint'], r.backend('torch').status, r.exit_code)\n"
    )
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["unavailable", "pip", "install", "'backendiff[ort]'", "ok", "3"]
