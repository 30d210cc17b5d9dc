"""backendiff: does the deployed model still compute what the PyTorch model computes?

    >>> import backendiff
    >>> report = backendiff.compare("zoo:digits-cnn", backends=["ort", "openvino"])
    >>> assert report, report.to_json()
"""
from .compare import compare
from .config import CompareConfig
from .errors import BackendUnavailable, BadInput, Failure
from .registry import register_backend, unregister_backend
from .report import Report
from .specs import BackendSpec, parse_spec, parse_specs

__all__ = [
    "compare", "CompareConfig", "Report", "BackendSpec", "parse_spec", "parse_specs",
    "register_backend", "unregister_backend", "BadInput", "BackendUnavailable", "Failure",
]
__version__ = "0.1.0"
