"""What the listing commands list, as JSON-ready rows: the backend adapters (``backendiff
backends``) and the built-in models with their reference scores (``backendiff zoo``). The
terminal tables are drawn from the same rows (``render.print_backends``, ``print_zoo``), so
``--json`` and the table never disagree."""
from __future__ import annotations

import numpy as np

from backendiff.models import ZOO, ZooEntry

from .errors import BadInput
from .reference import task_outputs
from .registry import adapter_class, names
from .tasks import evaluate


def backend_rows() -> list[dict]:
    """Every registered adapter's availability here, with the specs of an available backend
    that still cannot run (ort:cuda without onnxruntime-gpu, trt:bf16 on an old GPU)."""
    rows = []
    for name in names():
        cls = adapter_class(name)
        r = cls.availability()
        missing = cls.unavailable_variants() if r.available and hasattr(cls, "unavailable_variants") else {}
        rows.append(r.__dict__ | {"variants": list(r.variants),
                                  "variants_unavailable": {k: {"reason": why, "hint": hint}
                                                           for k, (why, hint) in missing.items()}})
    return rows


def zoo_rows() -> list[dict]:
    """One row per zoo entry: inputs, parameter count, task and the reference score on its
    held-out data; an entry whose package is not installed (zoo:minilm without [hf]) says so."""
    rows = []
    for name, entry in ZOO.items():
        row = {"name": name, "description": entry.description, "inputs": [s.to_dict() for s in entry.inputs]}
        try:
            module = entry.build()
        except BadInput as e:
            rows.append(row | {"parameters": None, "task": entry.task, "score": None, "unavailable": str(e)})
            continue
        rows.append(row | {"parameters": sum(p.numel() for p in module.parameters()), "task": entry.task,
                           "score": reference_score(entry, module)})
    return rows


def reference_score(entry: ZooEntry, module) -> dict | None:
    """The task metric of PyTorch eager on the entry's held-out data (None without a task)."""
    import torch

    task = entry.task_data()
    if task is None:
        return None
    spec = entry.inputs[0]
    sample = {spec.name: np.zeros(spec.shape, spec.dtype)}

    def run(batch):
        with torch.no_grad():
            return [module(torch.from_numpy(batch[spec.name])).numpy()]

    outputs = task_outputs(run, task, sample)
    result = evaluate(task, outputs, outputs)
    return {"metric": result["metric"], "value": result["reference"], "samples": int(len(task.inputs))}
