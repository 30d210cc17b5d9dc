"""The adapter contract's view of the model: ``ModelHandle`` is a ``ModelView``, and every
member an adapter reads of its ``model`` is in the view, and every member of the view is read."""
import ast
from pathlib import Path

import numpy as np
import torch

from backendiff.cache import Cache
from backendiff.contract import ModelView
from backendiff.loading import load_model
from backendiff.model import ModelHandle

ROOT = Path(__file__).resolve().parents[1]


def view_members() -> set[str]:
    return set(ModelView.__annotations__) | {name for name, value in vars(ModelView).items()
                                             if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def adapter_reads() -> dict[str, set[str]]:
    """Member -> the functions of ``backends/`` that read it of a parameter annotated ``ModelView``."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "backends").rglob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            views = {a.arg for a in fn.args.args + fn.args.kwonlyargs
                     if isinstance(a.annotation, ast.Name) and a.annotation.id == "ModelView"}
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in views:
                    found.setdefault(node.attr, set()).add(f"{path.relative_to(ROOT)}:{fn.name}")
    return found


def test_model_handle_is_a_model_view():
    module = torch.nn.Linear(3, 2).eval()
    handle = ModelHandle(load_model(module), [{"x": np.zeros((1, 3), np.float32)}], Cache(None))
    assert isinstance(handle, ModelView)
    assert not isinstance(object(), ModelView)
    missing = [name for name in view_members() if not hasattr(handle, name)]
    assert missing == []


def test_adapters_read_exactly_the_view():
    reads = adapter_reads()
    assert {name: where for name, where in reads.items() if name not in view_members()} == {}
    assert view_members() - set(reads) == set()
