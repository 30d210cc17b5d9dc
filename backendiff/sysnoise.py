"""SysNoise on real runtimes: how much of a model's task metric each source of
training/deployment inconsistency costs, measured through the actual backends.

A model declares its training pipeline (``Pipeline``): how stored source images become its
inputs. Each pre-processing noise changes one factor of that pipeline (the image decoder,
the resize library and mode, an RGB -> YCbCr -> RGB round trip); inference noise is a
precision variant of a backend or a patch of the model's own operators (upsampling mode,
max-pool ceil mode); post-processing noise is another output decoding. Every noisy variant
is run on every backend, and Δ = clean − noisy is the task metric lost, in points, against
the same backend's clean run. Small pure functions build the inputs; ``measure`` runs them.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace

import numpy as np

from . import noise as N
from .errors import BackendUnavailable, BadInput
from .noise import Pipeline, Source, preprocess  # noqa: F401 - part of this module's interface
from .tasks import TaskData, evaluate

SCHEMA = "backendiff.sysnoise/1"


@dataclass(frozen=True)
class Noise:
    name: str                 # row of the table
    kind: str                 # "pre", "inference", "post", "combined"
    factor: dict              # what differs from the clean pipeline / model / decoding


def pre_noises(pipeline: Pipeline, channels: int, have_opencv: bool) -> list[Noise]:
    """Every one-factor change of the pipeline's pre-processing that can run here."""
    out = []
    other = "opencv" if pipeline.decoder == "pil" else "pil"
    if have_opencv or other == "pil":
        out.append(Noise(f"decode: {other}", "pre", {"decoder": other}))
    libraries = [("pil", N.PIL_RESIZE), ("torch", N.TORCH_RESIZE)] + ([("opencv", N.CV_RESIZE)] if have_opencv else [])
    for library, modes in libraries:
        for mode in modes:
            if (library, mode) != tuple(pipeline.resize):
                out.append(Noise(f"resize: {library} {mode}", "pre", {"resize": (library, mode)}))
    if channels == 3:
        out += [Noise("colour: YCbCr 4:4:4 float", "pre", {"ycc": ("444", False)}),
                Noise("colour: YCbCr 4:4:4 8-bit", "pre", {"ycc": ("444", True)}),
                Noise("colour: YCbCr 4:2:0 8-bit", "pre", {"ycc": ("420", True)})]
    return out


def combined_noise(pipeline: Pipeline, channels: int, have_opencv: bool) -> Noise:
    """All pre-processing factors at once, as a deployment that shares nothing with training
    would have them (another decoder, another library's bilinear resize, 4:2:0 video)."""
    factor = {"resize": ("opencv", "bilinear") if have_opencv and pipeline.resize[0] != "opencv"
              else ("torch", "bilinear")}
    if have_opencv or pipeline.decoder != "pil":
        factor["decoder"] = "opencv" if pipeline.decoder == "pil" else "pil"
    if channels == 3:
        factor["ycc"] = ("420", True)
    return Noise("combined pre-processing", "combined", factor)


def model_patches(module) -> list[Noise]:
    """Operator swaps the model allows: max-pool ceil mode flipped, upsampling's
    ``align_corners`` flipped or the mode swapped to nearest (for modules that expose
    ``upsample_mode`` / ``align_corners`` attributes or use ``nn.Upsample``)."""
    import torch.nn as nn

    out = []
    if any(isinstance(m, nn.MaxPool2d) for m in module.modules()):
        out.append(Noise("max-pool ceil mode flipped", "inference", {"patch": "ceil_mode"}))
    if any(hasattr(m, "align_corners") for m in module.modules()):
        out.append(Noise("upsample align_corners flipped", "inference", {"patch": "align_corners"}))
        out.append(Noise("upsample nearest for bilinear", "inference", {"patch": "nearest"}))
    return out


def runnable_patches(module, batch: np.ndarray) -> list[Noise]:
    """The model's operator swaps, each marked not applicable (with why) when the patched
    PyTorch model no longer runs (a ceil-mode flip that changes a feature map's size)."""
    import torch

    out = []
    for noise in model_patches(module):
        try:
            with torch.no_grad():
                patched(module, noise.factor["patch"])(torch.from_numpy(batch))
        except Exception as e:  # noqa: BLE001 - the reason is the row's data
            from .errors import first_line

            noise = replace(noise, factor={**noise.factor, "not_applicable": first_line(e)[:120]})
        out.append(noise)
    return out


def patched(module, patch: str):
    """A deep copy of ``module`` with one operator swap applied."""
    import torch.nn as nn

    module = copy.deepcopy(module)
    for m in module.modules():
        if patch == "ceil_mode" and isinstance(m, nn.MaxPool2d):
            m.ceil_mode = not m.ceil_mode
        elif patch == "align_corners" and hasattr(m, "align_corners") and m.align_corners is not None:
            m.align_corners = not m.align_corners
        elif patch == "nearest" and hasattr(m, "upsample_mode"):
            m.upsample_mode, m.align_corners = "nearest", None
    return module


def decoder_noises(task: str) -> list[Noise]:
    if task == "pose":
        return [Noise("decode keypoints: argmax only", "post", {"decode": "argmax"}),
                Noise("decode keypoints: sub-pixel (parabola)", "post", {"decode": "subpixel"})]
    return []


def delta(clean: float | None, noisy: float | None) -> float | None:
    return None if clean is None or noisy is None else clean - noisy


# the metric of the table: the task's primary one, but OKS AP for pose (PCK@0.1 saturates
# on a well-trained model and hides what the stricter keypoint AP shows)
TABLE_METRIC = {"pose": ("ap_reference", "OKS AP")}


def score(task: TaskData, outputs: np.ndarray, decode: str | None = None) -> float:
    """The table's metric of ``outputs`` against the labels."""
    params = dict(task.params)
    if decode:
        params["decode"] = decode
    key = TABLE_METRIC.get(task.name, ("reference", None))[0]
    return float(evaluate(replace(task, params=params), outputs, outputs)[key])


def check_source(source: Source) -> None:
    if source.images.dtype != np.uint8 or source.images.ndim != 4:
        raise BadInput("sysnoise sources must be uint8 images (N, H, W, C)")
    if len(source.images) != len(source.labels):
        raise BadInput("sysnoise: one label per source image")


def opencv_available() -> bool:
    try:
        N._cv2()
    except BackendUnavailable:
        return False
    return True


# -- running -----------------------------------------------------------------------------

def low_precision(base: str) -> tuple[str, ...]:
    """The precision rows of a backend: the low-precision variants its adapter declares."""
    from .registry import adapter_class

    return adapter_class(base).low_precision_variants()


def other_route(base: str) -> str | None:
    """The other conversion route of a backend that has two (its default is the ExportedProgram)."""
    from .registry import adapter_class

    routes = adapter_class(base).other_routes()
    return routes[0] if routes else None


def _outputs(cls, spec, handle, task: TaskData, inputs_list: list[np.ndarray]) -> list[np.ndarray]:
    """Compile ``spec`` for the model of ``handle`` and run every inputs array through it."""
    from .reference import task_outputs
    from .runner import compiled_folder

    adapter = cls(spec)
    cls.check()
    adapter.check_variant()
    folder = compiled_folder(cls, adapter, spec, handle, adapter.route(handle))
    compiled = adapter.compile(adapter.convert(handle, folder), folder)
    with compiled:
        return [task_outputs(compiled.run, replace(task, inputs=x), handle.samples[0]) for x in inputs_list]


def _cell(fn):
    """A table cell: the metric, or why it could not be measured."""
    try:
        return {"value": fn()}
    except BackendUnavailable as e:
        return {"error": f"unavailable: {e.reason}"}
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - a runtime's failure is this cell's data
        from .errors import first_line

        return {"error": f"{type(e).__name__}: {first_line(e)[:160]}"}


def backend_column(base: str, module, input_name: str, batch: int, cache, task: TaskData, clean_inputs,
                   noisy: dict, patches: list[Noise], posts: list[Noise], combined: np.ndarray,
                   progress) -> dict[str, dict]:
    """Every cell of one backend's column: row name -> {"value"} or {"error"}. Meant to run
    in a worker (``isolation.run_isolated``): a runtime that crashes loses only its column."""
    from .loading import load_model
    from .model import ModelHandle
    from .registry import adapter_class
    from .specs import parse_specs

    cls = adapter_class(base)

    calibration = [{input_name: clean_inputs[i:i + batch]} for i in range(0, len(clean_inputs) - batch + 1, batch)][:32]

    def handle_for(m):
        return ModelHandle(load_model(m), [{input_name: clean_inputs[:batch]}], cache,
                           calibration_source=lambda: (calibration, {"source": "sysnoise clean inputs"}))

    def spec_of(text):
        return cls.canonical(parse_specs(text)[0])

    def scored(spec, handle, inputs=clean_inputs):
        return score(task, _outputs(cls, spec, handle, task, [inputs])[0])

    handle, spec = handle_for(module), spec_of(base)
    progress(f"sysnoise {base}: clean and {len(noisy)} pre-processing variants")
    names = ["clean"] + list(noisy)
    outs = _cell(lambda: _outputs(cls, spec, handle, task, [clean_inputs] + [noisy[n] for n in noisy]))
    if "error" in outs:
        return {name: outs for name in names}
    cells = {name: {"value": score(task, out)} for name, out in zip(names, outs["value"])}
    for post in posts:
        cells[post.name] = {"value": score(task, outs["value"][0], post.factor["decode"])}
    for variant in low_precision(base):
        progress(f"sysnoise {base}:{variant}")
        vspec = spec_of(f"{base}:{variant}")
        cells[f"precision: {variant}"] = _cell(lambda vspec=vspec: scored(vspec, handle))
    if other_route(base):
        progress(f"sysnoise {base}: {other_route(base)}")
        rspec = spec_of(f"{base}:fp32,{other_route(base)}")
        cells["conversion route: ONNX"] = _cell(lambda: scored(rspec, handle))
    for patch in patches:
        if "not_applicable" in patch.factor:
            cells[patch.name] = {"error": f"not applicable: {patch.factor['not_applicable']}"}
            continue
        progress(f"sysnoise {base}: {patch.name}")
        cells[patch.name] = _cell(lambda patch=patch: scored(spec, handle_for(patched(module, patch.factor["patch"]))))
    cspec = spec_of(f"{base}:int8" if "int8" in low_precision(base) else base)
    cells["combined"] = _cell(lambda: scored(cspec, handle, combined))
    return cells


def measure(model: str, backends: list[str], config, progress=lambda m: None) -> dict:
    """The SysNoise table of a zoo model on ``backends`` (base names: torch, ort, ...)."""
    from .cache import Cache, default_cache_dir
    from .isolation import parse_limits, run_isolated
    from .report import CRASHED, BackendResult

    entry = zoo_entry(model)
    source, pipeline = entry.sysnoise()
    check_source(source)
    module = entry.build()
    spec = entry.inputs[0]
    channels = source.images.shape[3]
    have_cv = opencv_available()
    task = TaskData(source.task, np.zeros((0,)), source.labels, f"zoo:{entry.name} sysnoise source", source.params)
    progress("pre-processing the clean and noisy inputs")
    clean = preprocess(source.images, pipeline)
    pres = pre_noises(pipeline, channels, have_cv)
    noisy = {n.name: preprocess(source.images, pipeline, **n.factor) for n in pres}
    comb = combined_noise(pipeline, channels, have_cv)
    combined = preprocess(source.images, pipeline, **comb.factor)
    patches, posts = runnable_patches(module, clean[: spec.shape[0]]), decoder_noises(source.task)
    cache = Cache((config.cache_dir or default_cache_dir()) if config.use_cache else None)
    cache.prepare()
    limits = parse_limits(config.timeout)
    columns = {}
    try:
        for base in backends:
            def work(prog, enter, base=base):
                return backend_column(base, module, spec.name, spec.shape[0], cache, task, clean, noisy, patches,
                                      posts, combined, prog)
            shell = BackendResult(spec=base, backend=base, variant=None, status=CRASHED)
            out = run_isolated(work, shell, limits, progress) if config.isolate else work(progress, lambda s: None)
            columns[base] = out if isinstance(out, dict) else {"clean": {"error": f"{out.status}: {out.error['message']}"}}
    finally:
        cache.close()
    rows = [{"noise": "clean", "kind": "clean", "factor": {}}]
    rows += [{"noise": n.name, "kind": n.kind, "factor": n.factor} for n in pres]
    rows += [{"noise": f"precision: {v}", "kind": "inference", "factor": {"variant": v}}
             for v in sorted({v for b in backends for v in low_precision(b)}, key=["fp16", "bf16", "int8"].index)]
    if any(other_route(b) for b in backends):
        rows.append({"noise": "conversion route: ONNX", "kind": "inference", "factor": {"route": "onnx"}})
    rows += [{"noise": n.name, "kind": n.kind, "factor": n.factor} for n in patches + posts]
    rows.append({"noise": "combined", "kind": "combined", "factor": {**comb.factor, "variant": "int8 where available"}})
    for row in rows:
        row["cells"] = {}
        for base in backends:
            col = columns[base]
            cell = dict(col.get(row["noise"], col.get("clean") if "error" in col.get("clean", {}) else
                                {"error": "not applicable"}))
            if "value" in cell and row["noise"] != "clean" and "value" in col.get("clean", {}):
                cell["delta"] = delta(col["clean"]["value"], cell["value"])
            row["cells"][base] = cell
    table = {"schema": SCHEMA, "model": f"zoo:{entry.name}", "task": source.task,
             "metric": _metric_name(source.task, source.params),
             "samples": int(len(source.labels)), "pipeline": pipeline.describe(),
             "opencv": have_cv, "backends": backends, "rows": rows}
    return json.loads(json.dumps(table, default=list))      # plain JSON data: what is saved is what is rendered


def _metric_name(task: str, params: dict) -> str:
    if task in TABLE_METRIC:
        return TABLE_METRIC[task][1]
    return {"classification": "top1", "embeddings": "retrieval@1"}.get(task, task)


def zoo_entry(model: str):
    from backendiff.models import ZOO

    name = model[4:] if model.startswith("zoo:") else model
    entry = ZOO.get(name)
    if entry is None or entry.sysnoise is None:
        with_pipeline = ", ".join(f"zoo:{n}" for n, e in ZOO.items() if e.sysnoise)
        raise BadInput(f"{model} declares no training pipeline for sysnoise; models that do: {with_pipeline}")
    return entry


def decoder_table(quality: int = 90) -> list[dict]:
    """Decoder noise on real photographs: each shipped JPEG decoded by Pillow and by OpenCV,
    and each photograph stored at JPEG ``quality`` by Pillow then decoded by both. Per
    image: the two decodes' pixel difference, and (for the round trip) the JPEG loss."""
    rows = []
    for name, data, pixels in N.photographs():
        if data is not None:
            rows.append({"image": name, "stored": "the shipped file", "size": list(pixels.shape[:2]),
                         **N.pixel_difference(N.decode_bytes(data, "pil"), N.decode_bytes(data, "opencv"))})
        encoded = N.encode_jpeg(pixels, quality)
        pil = N.decode_bytes(encoded, "pil")
        row = {"image": name, "stored": f"Pillow JPEG q{quality}", "size": list(pixels.shape[:2]),
               **N.pixel_difference(pil, N.decode_bytes(encoded, "opencv"))}
        row["jpeg_loss_mean_abs"] = N.pixel_difference(pil, pixels)["mean_abs"]
        rows.append(row)
    return rows


def _photo_variants(quality: int) -> dict[str, list[np.ndarray]]:
    """The ten photographs of zoo:photo-patches as a deployment might decode them: as shipped
    (the JPEG files among them decoded by Pillow and by OpenCV), and stored by Pillow at JPEG
    ``quality`` then decoded by each. The lossless source is Pillow's read of each file."""
    from importlib.resources import files

    from PIL import Image

    from backendiff.models import photo_patches_data as D

    source = list(D.photos())
    out: dict[str, list[np.ndarray]] = {"source": source}
    for decoder in ("pil", "opencv"):
        shipped = []
        for (_name, package, path, factor), img in zip(D.PHOTOS, source):
            if not path.endswith(".jpg"):
                shipped.append(img)                  # PNG: lossless, the same pixels for any decoder
                continue
            a = N.decode_bytes((files(package) / path).read_bytes(), decoder)
            shipped.append(np.asarray(Image.fromarray(a).reduce(factor)) if factor > 1 else a)
        out[f"shipped files, {decoder}"] = shipped
        out[f"JPEG q{quality}, {decoder}"] = [N.decode_bytes(N.encode_jpeg(img, quality), decoder) for img in source]
    return out


def decoder_flips(quality: int = 90) -> dict:
    """Decoder noise as prediction flips of a trained natural-image model: zoo:photo-patches
    (which of ten bundled photographs a 64x64 crop is from) on its 538 held-out crops, each
    photograph decoded several ways (``_photo_variants``), cropped, resized as in training
    (Pillow bilinear to 32x32) and classified by the PyTorch model. Per decoding: top-1; per
    pair of decodings: the crops whose prediction changed and the pixel difference."""
    import torch

    from backendiff.models import ZOO
    from backendiff.models import photo_patches_data as D

    if not opencv_available():
        raise BackendUnavailable("OpenCV is not installed", "pip install 'backendiff[sysnoise]'")
    model = ZOO["photo-patches"].build().eval()
    boxes = D.heldout_boxes()
    labels = boxes[:, 0]

    def predict(images: list[np.ndarray]) -> np.ndarray:
        x = np.stack([np.transpose(N.resize(images[c][t:t + D.CROP, left:left + D.CROP], D.SIZE, "pil", "bilinear"),
                                   (2, 0, 1)) for c, t, left in boxes]).astype(np.float32) / 255.0
        with torch.no_grad():
            return model(torch.from_numpy(x)).argmax(1).numpy()

    variants = _photo_variants(quality)
    preds = {name: predict(images) for name, images in variants.items()}
    pairs = [("shipped files, pil", "shipped files, opencv"), (f"JPEG q{quality}, pil", f"JPEG q{quality}, opencv"),
             ("source", f"JPEG q{quality}, pil")]
    rows = []
    for a, b in pairs:
        changed = preds[a] != preds[b]
        diffs = [N.pixel_difference(x, y) for x, y in zip(variants[a], variants[b])]
        rows.append({"a": a, "b": b, "flips": int(changed.sum()), "flip_rate": float(changed.mean()),
                     "top1_a": 100.0 * float((preds[a] == labels).mean()),
                     "top1_b": 100.0 * float((preds[b] == labels).mean()),
                     "max_abs": max(d["max_abs"] for d in diffs),
                     "mean_abs": float(np.mean([d["mean_abs"] for d in diffs]))})
    jpegs = [name for name, _, path, _ in D.PHOTOS if path.endswith(".jpg")]
    return {"model": "zoo:photo-patches", "crops": int(len(boxes)), "quality": quality, "shipped_jpegs": jpegs,
            "rows": rows}
