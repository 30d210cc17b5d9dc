"""The built-in model zoo (installed as ``backendiff.models``): ``zoo:NAME`` on the CLI.

Each entry: a definition, the inputs it takes, and where trained, small committed
weights with the script that trained them and its data loader (``train_digits.py`` on
scikit-learn's digits, ``train_mspn.py`` on the synthetic figures of
``keypoints_data.py``, ``train_photo_patches.py`` on patches of the photographs bundled
in scikit-learn and scikit-image, cut by ``photo_patches_data.py``), the end task and its
held-out data. Random-weight entries are seeded, so every run builds the same model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from backendiff.inputs import InputSpec

WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    factory: Callable
    inputs: tuple[InputSpec, ...]
    weights: str | None = None  # file in weights/, loaded with weights_only=True
    task: str | None = None     # the end task its data is labelled for
    data: Callable | None = None  # () -> (inputs, labels): its held-out evaluation data
    task_params: dict = field(default_factory=dict)  # keyword arguments of the task's metric
    sysnoise: Callable | None = None  # () -> (noise.Source, noise.Pipeline): its training pipeline
    calibration: Callable | None = None  # (n) -> n inputs (first input) from its *training* split: int8 calibration

    def task_data(self):
        """The held-out data as backendiff.tasks.TaskData (None without a task)."""
        from backendiff.tasks import TaskData

        if not (self.task and self.data):
            return None
        inputs, labels = self.data()
        return TaskData(self.task, inputs, labels, f"zoo:{self.name} held-out split", dict(self.task_params))

    def build(self):
        import torch

        model = self.factory()
        if self.weights:
            state = torch.load(WEIGHTS / self.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        return model.eval()


def _digits_heldout():
    from .train_digits import load_digits_split

    _, _, x_test, y_test = load_digits_split()
    return x_test, y_test


def _digits_calibration(n: int):
    """n training digits (a seeded choice: never the held-out split the task scores)."""
    import numpy as np

    from .train_digits import load_digits_split

    x_train = load_digits_split()[0]
    return x_train[np.random.default_rng(0).permutation(len(x_train))[:n]]


def _keypoints_calibration(n: int):
    """n figures rendered like the training split (its seed), never the held-out ones."""
    from .keypoints_data import make_split
    from .train_mspn import TRAIN_SEED

    return make_split(n, TRAIN_SEED)[0]


def _photo_patches_calibration(n: int):
    """n training crops (seeded positions in the left 70%) through the model's pipeline."""
    import numpy as np

    from .photo_patches_data import cut, inputs, train_boxes

    boxes = train_boxes(-(-n // 10), seed=1)               # class by class: shuffled, then n of them
    return inputs(cut(boxes[np.random.default_rng(1).permutation(len(boxes))[:n]]))


def _digits(width: int, cls: str = "DigitsCNN"):
    def make():
        from . import digits_cnn

        return getattr(digits_cnn, cls)(width=width)

    return make


def _digits_pipeline():
    """scikit-learn's digits are 32x32 bitmaps counted in 4x4 blocks (0..16): the camera-side
    source is the 8x8 image blown up to 32x32, stored as JPEG, box-resized back to 8x8."""
    import numpy as np

    from backendiff.noise import Pipeline, Source

    x, y = _digits_heldout()
    big = np.repeat(np.repeat(np.rint(x[:, 0] * 255), 4, 1), 4, 2).astype(np.uint8)[..., None]
    return Source(big, y, "classification"), Pipeline(size=(8, 8), resize=("pil", "box"))


def _keypoints_pipeline():
    """The held-out figures rendered at twice the size (128x96) as a camera would give them,
    stored as JPEG, resized to 64x48 with Pillow's bilinear filter."""
    import numpy as np

    from backendiff.noise import Pipeline, Source

    from .keypoints_data import make_split
    from .train_mspn import TEST_SAMPLES, TEST_SEED

    images, keypoints = make_split(TEST_SAMPLES, TEST_SEED, scale=2)
    source = np.rint(np.transpose(images, (0, 2, 3, 1)) * 255).astype(np.uint8)
    return Source(source, keypoints, "pose", _keypoint_params()), Pipeline(size=(64, 48), resize=("pil", "bilinear"))


def _photo_patches():
    from .photo_patches import PhotoPatchesCNN

    return PhotoPatchesCNN()


def _photo_patches_heldout():
    from .train_photo_patches import heldout

    return heldout()


def _photo_patches_pipeline():
    """The held-out 64x64 crops of the photographs as the camera-side source, stored as JPEG
    q90, decoded by Pillow, Pillow bilinear resize to 32x32: the pipeline the model trained on."""
    from backendiff.noise import Source

    from .photo_patches_data import heldout_crops, pipeline

    crops, labels, _ = heldout_crops()
    return Source(crops, labels, "classification"), pipeline()


def _mspn():
    from .mspn_tiny import MSPNTiny

    return MSPNTiny()


def _keypoints_heldout():
    from .train_mspn import heldout

    return heldout()


def _keypoint_params():
    from .keypoints_data import HEIGHT, SIGMAS, WIDTH

    return {"image_size": (HEIGHT, WIDTH), "sigmas": tuple(float(s) for s in SIGMAS)}


def _minilm():
    from .minilm import build

    return build()


def _minilm_heldout():
    from .minilm import heldout

    return heldout()


def _minilm_calibration(n: int):
    """The sentence set's calibration split (never the held-out sentences the task scores)."""
    from .minilm import calibration

    return calibration(n)


def _seeded(builder: str):
    def make():
        import torch

        from . import nets

        torch.manual_seed(0)
        return getattr(nets, builder)()

    return make


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("digits-cnn", "CNN trained on scikit-learn digits (conv/BN/ReLU, ceil-mode max-pool), width 16",
                 _digits(16), (InputSpec("x", (8, 1, 8, 8), "float32", 0.0, 1.0),), "digits_cnn_w16.pt",
                 "classification", _digits_heldout, sysnoise=_digits_pipeline, calibration=_digits_calibration),
        ZooEntry("digits-cnn-narrow", "the same CNN at width 4",
                 _digits(4), (InputSpec("x", (8, 1, 8, 8), "float32", 0.0, 1.0),), "digits_cnn_w4.pt",
                 "classification", _digits_heldout, sysnoise=_digits_pipeline, calibration=_digits_calibration),
        ZooEntry("digits-cnn-embed", "digits-cnn's trained features as L2-normalised embeddings (retrieval of "
                 "same-digit neighbours)", _digits(16, "DigitsEmbedding"),
                 (InputSpec("x", (8, 1, 8, 8), "float32", 0.0, 1.0),), "digits_cnn_w16.pt",
                 "embeddings", _digits_heldout, calibration=_digits_calibration),
        ZooEntry("mspn-tiny", "2-stage MSPN-style pose net (bilinear align_corners=True top-down paths, cross-stage "
                 "aggregation) trained on rendered stick figures, 11 keypoints", _mspn,
                 (InputSpec("image", (8, 3, 64, 48), "float32", 0.0, 1.0),), "mspn_tiny.pt",
                 "pose", _keypoints_heldout, _keypoint_params(), sysnoise=_keypoints_pipeline,
                 calibration=_keypoints_calibration),
        ZooEntry("photo-patches", "CNN trained to tell which of ten real photographs (bundled in scikit-learn and "
                 "scikit-image) a 64x64 patch comes from, at 32x32 after JPEG q90 and a Pillow bilinear resize",
                 _photo_patches, (InputSpec("x", (8, 3, 32, 32), "float32", 0.0, 1.0),), "photo_patches.pt",
                 "classification", _photo_patches_heldout, sysnoise=_photo_patches_pipeline,
                 calibration=_photo_patches_calibration),
        ZooEntry("minilm", "pretrained sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT, mean pooling, L2 "
                 "norm) on a shipped sentence set: do same-topic sentences stay nearest neighbours; needs "
                 "backendiff[hf]", _minilm,
                 # token ids of 8 sentences padded to 32 with [PAD] = 0 (the mask is ids != 0), within the vocabulary
                 (InputSpec("input_ids", (8, 32), "int64", 0, 30522),),
                 task="embeddings", data=_minilm_heldout, calibration=_minilm_calibration),
        ZooEntry("mini-pose", "MSPN-style down/up path: bilinear upsampling (align_corners True and False), "
                 "heatmap head (random weights)", _seeded("MiniPose"), (InputSpec("image", (1, 3, 64, 48)),)),
        ZooEntry("tiny-transformer", "2-layer pre-norm transformer encoder: LayerNorm, multi-head attention, "
                 "GELU (random weights)", _seeded("TinyTransformer"), (InputSpec("tokens", (2, 16, 32)),)),
        ZooEntry("resnet18", "ResNet-18 at 224x224 (random weights; for scale and benchmarks)",
                 _seeded("resnet18"), (InputSpec("x", (1, 3, 224, 224)),)),
        ZooEntry("fp16-overflow", "two linear layers, the first overflowing fp16 (where a NaN/Inf is born)",
                 _seeded("Fp16Overflow"), (InputSpec("x", (4, 16)),)),
        ZooEntry("resnet50", "ResNet-50 at 224x224 (random weights; for the layer-wise memory benchmark)",
                 _seeded("resnet50"), (InputSpec("x", (1, 3, 224, 224)),)),
        ZooEntry("mobilenetv2", "MobileNetV2 1.0 at 224x224: inverted residuals, depthwise conv, ReLU6 "
                 "(random weights; for numeric divergence and scale)",
                 _seeded("mobilenet_v2"), (InputSpec("x", (1, 3, 224, 224)),)),
        ZooEntry("vit-tiny", "ViT at DeiT-Tiny size (patch 16, dim 192, depth 12, 3 heads) at 224x224, "
                 "attention written out (random weights; for numeric divergence and scale)",
                 _seeded("vit_tiny"), (InputSpec("x", (1, 3, 224, 224)),)),
    ]
}
