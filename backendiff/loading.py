"""Load a model from any of the sources backendiff accepts.

``.pt2`` (torch.export ExportedProgram), ``.pt``/``.pth`` TorchScript archive, ``.onnx``,
``file.py:factory`` or ``package.module:factory`` (optional ``--weights`` state dict),
``zoo:NAME``, or, from Python, an ``nn.Module`` / ``ExportedProgram`` object.

A pickled whole ``nn.Module`` runs arbitrary code when loaded: it is refused unless the
caller explicitly trusts it. State dicts load with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput, first_line
from .inputs import InputSpec

FORMATS = ("pt2", "torchscript", "onnx", "factory", "zoo", "module", "exported_program", "pickle")


@dataclass
class LoadedModel:
    """What was loaded, before any export. Exactly one of module / exported / onnx_path is the
    primary form; ``torchscript`` is set for TorchScript archives (``module`` is then the same
    scripted module)."""

    source: str
    format: str
    # a hash of what the runtimes consume: the file's bytes for self-contained archives
    # (.pt2, TorchScript, .onnx with its external data), the ExportedProgram for an
    # in-memory program; None for Python modules (zoo, factories, pickles), which are keyed
    # by their export (``artifacts.Artifacts.key``), never by their Python source
    content_key: str | None
    module: Any = None              # torch.nn.Module (eager), or a ScriptModule
    exported: Any = None            # torch.export.ExportedProgram
    onnx_path: Path | None = None
    torchscript: bool = False
    example_args: tuple | None = None   # torch tensors, when the source carries them
    input_specs: list[InputSpec] | None = None  # declared inputs (zoo models, ONNX graphs)
    input_names: list[str] = field(default_factory=list)
    zoo_name: str | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def forward_input_names(module) -> list[str]:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return []
    return [
        p.name for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]


def load_model(source, *, weights: str | Path | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load ``source`` (a path/spec string or a module/ExportedProgram object)."""
    import torch

    if isinstance(source, torch.export.ExportedProgram):
        return _from_exported(source, "<ExportedProgram>", "exported_program", None)
    if isinstance(source, torch.nn.Module):
        if weights is not None:
            _load_weights(source, weights)
        return LoadedModel(source="<nn.Module>", format="module", content_key=None,
                           module=source.eval(), input_names=forward_input_names(source))
    if not isinstance(source, (str, Path)):
        raise BadInput(f"cannot load a model from a {type(source).__name__}")
    text = str(source)
    if text.startswith("zoo:"):
        return _load_zoo(text[4:], weights)
    path = Path(text)
    if path.suffix.lower() in (".pt2", ".pt", ".pth", ".onnx", ".ts", ".jit") or path.exists():
        if not path.exists():
            raise BadInput(f"model file not found: {path}")
        if path.is_dir():
            raise BadInput(f"model path is a folder, not a file: {path}")
        if path.stat().st_size == 0:
            raise BadInput(f"model file is empty: {path}")
        if weights is not None:
            raise BadInput("--weights applies to file.py:factory, package.module:factory and zoo: models only")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return _load_onnx(path)
        if suffix == ".pt2":
            return _load_pt2(path)
        return _load_torch_file(path, trust_pickle)
    if ":" in text:
        return _load_factory(text, weights)
    raise BadInput(
        f"cannot tell what model {text!r} is: expected a .pt2/.pt/.onnx file, file.py:factory, "
        "package.module:factory or zoo:NAME"
    )


def _from_exported(ep, source: str, fmt: str, key: str | None) -> LoadedModel:
    sig = ep.graph_signature
    names = list(sig.user_inputs)
    example = None
    ex = getattr(ep, "example_inputs", None)
    if ex is not None:
        args, kwargs = ex
        if not kwargs:
            example = tuple(args)
    specs = []
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for n in names:
        val = placeholders[n].meta.get("val") if n in placeholders else None
        if val is not None and hasattr(val, "shape"):
            try:
                shape = tuple(int(d) for d in val.shape)
            except TypeError:  # symbolic dims: no declared shape
                specs = None
                break
            specs.append(InputSpec(n, shape, str(val.dtype).replace("torch.", "")))
    if key is None:
        key = program_key(ep)
    return LoadedModel(source=source, format=fmt, content_key=key, exported=ep, module=ep.module(),
                       example_args=example, input_specs=specs or None, input_names=names)


def _hash_tensor(h, name: str, t) -> None:
    import torch

    h.update(name.encode() + b"\0")
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    else:  # a script object or other constant: its type and repr
        h.update(f"{type(t).__module__}.{type(t).__qualname__}:{t!r}".encode())


def program_key(ep) -> str:
    """Content key of an ExportedProgram: what every runtime consumes, never Python source.

    Every graph's code (the ops, their arguments and the constants written into it, so a
    stored callable, a lambda, a helper in another file or a changed constant all show), each
    node's module path and source location (the report's names and file:line come from
    them), the signature (parameters, buffers, constants, user inputs and outputs), the
    input/output tree, the dynamic-shape ranges, and every weight, buffer and lifted
    constant by value."""
    h = hashlib.sha256()
    for name, gm in ep.graph_module.named_modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        h.update(f"graph {name}\n{gm.code}".encode())
        for node in graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            h.update(f"{node.name}|{node.meta.get('stack_trace') or ''}|"
                     f"{[v for v in stack.values()]}".encode())
    h.update(str(ep.graph_signature).encode())
    h.update(str(getattr(ep, "call_spec", "")).encode())
    h.update(str(sorted((str(k), str(v)) for k, v in ep.range_constraints.items())).encode())
    for name, t in sorted(ep.state_dict.items()):
        _hash_tensor(h, "state:" + name, t)
    for name, t in sorted(ep.constants.items()):
        _hash_tensor(h, "const:" + name, t)
    return h.hexdigest()


def onnx_key(path: Path, model=None) -> str:
    """Content key of an ONNX file and of the external data files its tensors name."""
    h = hashlib.sha256(sha256_file(path).encode())
    if model is not None:
        files = set()
        for init in list(model.graph.initializer):
            if init.data_location == 1:  # onnx.TensorProto.EXTERNAL
                files.update(e.value for e in init.external_data if e.key == "location")
        for name in sorted(files):
            data = path.parent / name
            h.update(name.encode() + (sha256_file(data) if data.is_file() else "missing").encode())
    return h.hexdigest()


def _load_pt2(path: Path) -> LoadedModel:
    import torch

    quiet = logging.getLogger("torch.export")     # it logs the archive reader's traceback as a warning
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a bad archive
        raise BadInput(f"cannot read {path} as a torch.export archive (.pt2): {first_line(e) or type(e).__name__}") from None
    finally:
        quiet.setLevel(level)
    return _from_exported(ep, str(path), "pt2", sha256_file(path))


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _load_torch_file(path: Path, trust_pickle: bool) -> LoadedModel:
    import torch

    names = _zip_names(path)
    if names is None:
        raise BadInput(f"cannot read model file {path}: not a PyTorch archive (corrupt, truncated or another format)")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        try:
            ts = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise BadInput(f"cannot read TorchScript archive {path}: {first_line(e) or type(e).__name__}") from None
        ts.eval()
        graph_inputs = list(ts.graph.inputs())[1:]
        input_names = [re.sub(r"\.\d+$", "", i.debugName()) for i in graph_inputs]
        return LoadedModel(source=str(path), format="torchscript", content_key=sha256_file(path), module=ts,
                           torchscript=True, input_names=input_names)
    if any(n.endswith("archive_format") or "/models/" in n for n in names):
        return _load_pt2(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or type(e).__name__ == "UnpicklingError":
            if not trust_pickle:
                raise BadInput(
                    f"refusing to load {path}: it is a pickled Python object, and unpickling runs arbitrary code. "
                    "Save it as TorchScript (torch.jit.save), torch.export (.pt2) or a state dict, "
                    "or pass --trust-pickle if you trust this file"
                ) from None
            obj = None
        else:
            raise BadInput(f"cannot read model file {path}: {first_line(e) or type(e).__name__}") from None
    if obj is not None:
        if isinstance(obj, dict):
            raise BadInput(
                f"{path} holds a state dict (weights only), not a model: give the model as "
                f"file.py:factory or package.module:factory with --weights {path}"
            )
        raise BadInput(f"{path} holds a {type(obj).__name__}, not a model")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise BadInput(f"cannot unpickle {path}: {first_line(e) or type(e).__name__}") from None
    if not isinstance(obj, torch.nn.Module):
        raise BadInput(f"{path} holds a {type(obj).__name__}, not an nn.Module")
    return LoadedModel(source=str(path), format="pickle", content_key=None, module=obj.eval(),
                       input_names=forward_input_names(obj))


def _load_onnx(path: Path) -> LoadedModel:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise BadInput(f"cannot read ONNX file {path}: {first_line(e) or type(e).__name__}") from None
    if not model.graph.node:
        raise BadInput(f"cannot read ONNX file {path}: the graph has no nodes (corrupt or not an ONNX model)")
    initializers = {i.name for i in model.graph.initializer}
    specs, names = [], []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        names.append(vi.name)
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if specs is not None and all(d is not None for d in dims):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
            specs.append(InputSpec(vi.name, tuple(dims), dtype))
        else:
            specs = None
    return LoadedModel(source=str(path), format="onnx", content_key=onnx_key(path, model), onnx_path=path.resolve(),
                       input_specs=specs, input_names=names)


def _load_weights(module, weights: str | Path) -> None:
    import torch

    path = Path(weights)
    if not path.is_file():
        raise BadInput(f"weights file not found: {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"cannot load weights {path} as a state dict (weights_only=True): "
                       f"{first_line(e) or type(e).__name__}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BadInput(f"weights file {path} does not hold a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BadInput(f"weights {path} do not fit the model: {first_line(e)}") from None


def _call_factory(factory, where: str):
    import torch

    try:
        made = factory()
    except Exception as e:
        raise BadInput(f"factory {where} failed: {type(e).__name__}: {first_line(e)}") from None
    example = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        made, example = made
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not isinstance(made, torch.nn.Module):
        raise BadInput(f"factory {where} returned a {type(made).__name__}, expected an nn.Module")
    return made, example


def _load_factory(text: str, weights) -> LoadedModel:
    target, _, attr = text.rpartition(":")
    if not target or not attr.isidentifier():
        raise BadInput(f"malformed factory {text!r}: expected file.py:factory or package.module:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise BadInput(f"model file not found: {path}")
        mod_name = f"backendiff_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[mod_name]
            raise BadInput(f"cannot import {path}: {type(e).__name__}: {first_line(e)}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise BadInput(f"cannot import module {target!r}: {first_line(e)}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise BadInput(f"{target} has no callable {attr!r}")
    made, example = _call_factory(factory, text)
    if weights is not None:
        _load_weights(made, weights)
    made.eval()
    specs = getattr(made, "example_input_specs", None)
    return LoadedModel(source=text, format="factory", content_key=None, module=made,
                       example_args=example, input_specs=list(specs) if specs else None,
                       input_names=forward_input_names(made))


def _load_zoo(name: str, weights) -> LoadedModel:
    from backendiff.models import ZOO

    entry = ZOO.get(name)
    if entry is None:
        raise BadInput(f"unknown zoo model {name!r}; available: {', '.join(sorted(ZOO))}")
    module = entry.build()
    if weights is not None:
        _load_weights(module, weights)
    module.eval()
    return LoadedModel(source=f"zoo:{name}", format="zoo", content_key=None, module=module,
                       input_specs=list(entry.inputs), input_names=[s.name for s in entry.inputs], zoo_name=name)
