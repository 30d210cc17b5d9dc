"""``--data DIR``: labelled images in the ImageFolder layout, read with a declared preprocessing."""
import numpy as np
import pytest
from PIL import Image

from backendiff.errors import BadInput
from backendiff.imagefolder import (
    Preprocess,
    class_names,
    load_image_folder,
    load_preprocess_file,
    parse_preprocess,
    take_round_robin,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits as 16x16 uint8 gray images (each pixel a 2x2 block)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * 255 / 16).astype(np.uint8)
    return np.kron(images, np.ones((2, 2), dtype=np.uint8)), d.target


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


@pytest.fixture
def digit_folder(tmp_path, digits):
    """Classes named so that sorted order differs from the digits: one -> 0, two -> 1, zero -> 2.
    Four PNGs each, plus files that must be ignored."""
    images, target = digits
    root = tmp_path / "digits"
    expected = {}
    for name, digit in (("zero", 0), ("one", 1), ("two", 2)):
        picks = images[target == digit][:4]
        for i, img in enumerate(picks):
            save(root / name / f"{i:02d}.PNG" if i == 3 else root / name / f"{i:02d}.png", img)
        expected[name] = picks
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".hidden.png").write_bytes(b"not even a png")
    (root / ".cache").mkdir()
    (root / "README.md").write_text("a file at the top is no class")
    return root, expected


def constant_rgb(path, size, colour):
    return save(path, np.full((size[0], size[1], 3), colour, dtype=np.uint8))


# --- the folder -------------------------------------------------------------------------------

def test_labels_follow_sorted_class_names_and_png_pixels_round_trip(digit_folder):
    root, expected = digit_folder
    data = load_image_folder(root, (1, 16, 16))
    assert class_names(root) == ["one", "two", "zero"]
    assert data.name == "classification" and data.inputs.dtype == np.float32 and data.labels.dtype == np.int64
    assert data.inputs.shape == (12, 1, 16, 16)
    assert data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    want = np.concatenate([expected[n] for n in ("one", "two", "zero")])[:, None].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(data.inputs, want)
    assert data.source == (f"imagefolder {root} (3 classes, 12 images; resize 16x16, L, /255, NCHW, bilinear)")


def test_nhwc_layout_and_dtype(digit_folder):
    root, _ = digit_folder
    nchw = load_image_folder(root, (1, 16, 16))
    nhwc = load_image_folder(root, (16, 16, 1), dtype="float64", preprocess="layout=nhwc")
    assert nhwc.inputs.shape == (12, 16, 16, 1) and nhwc.inputs.dtype == np.float64
    np.testing.assert_allclose(nhwc.inputs.transpose(0, 3, 1, 2), nchw.inputs, rtol=1e-6)
    raw = load_image_folder(root, (1, 16, 16), dtype="uint8", preprocess="scale=1")
    np.testing.assert_array_equal(raw.inputs, np.rint(nchw.inputs * 255).astype(np.uint8))


def test_limit_takes_classes_in_turn(digit_folder):
    root, _ = digit_folder
    data = load_image_folder(root, (1, 16, 16), limit=5)
    assert data.labels.tolist() == [0, 0, 1, 1, 2]
    np.testing.assert_array_equal(data.inputs, load_image_folder(root, (1, 16, 16)).inputs[[0, 1, 4, 5, 8]])
    assert "5 of 12 images" in data.source
    assert len(load_image_folder(root, (1, 16, 16), limit=100).labels) == 12
    assert take_round_robin([[1, 2, 3], [4], [5, 6]], 5) == [[1, 2], [4], [5, 6]]
    with pytest.raises(BadInput, match="bad limit 0"):
        load_image_folder(root, (1, 16, 16), limit=0)


def test_rgb_from_a_gray_file_and_gray_from_an_rgb_file(tmp_path):
    save(tmp_path / "a" / "gray.png", np.full((4, 4), 77, dtype=np.uint8))
    constant_rgb(tmp_path / "b" / "rgb.png", (4, 4), (100, 150, 200))
    rgb = load_image_folder(tmp_path, (3, 4, 4)).inputs
    assert np.all(rgb[0] == np.float32(77 / 255))
    np.testing.assert_allclose(rgb[1, :, 0, 0], np.array([100, 150, 200]) / 255, rtol=1e-6)
    gray = load_image_folder(tmp_path, (1, 4, 4)).inputs
    # Pillow's ITU-R 601-2 luma: 0.299 R + 0.587 G + 0.114 B = 140.75 -> 141
    assert np.all(gray[0] == np.float32(77 / 255)) and np.all(gray[1] == np.float32(141 / 255))


def test_imagenet_preset_normalises_a_constant_colour(tmp_path):
    colour = np.array([10, 128, 250])
    constant_rgb(tmp_path / "c" / "x.jpg", (50, 40), colour)   # JPEG keeps a flat colour close
    save(tmp_path / "c" / "y.png", np.full((60, 70, 3), colour, dtype=np.uint8))
    data = load_image_folder(tmp_path, (3, 28, 28), preprocess="imagenet")
    assert "resize 32, center-crop 28x28, RGB, /255, mean 0.485,0.456,0.406, std 0.229,0.224,0.225" in data.source
    want = (colour / 255 - IMAGENET_MEAN) / IMAGENET_STD     # by hand: [-1.9467, 0.2052, 2.5529]
    np.testing.assert_allclose(want, [-1.94666, 0.20518, 2.55285], atol=1e-5)
    np.testing.assert_allclose(data.inputs[1], np.broadcast_to(want[:, None, None], (3, 28, 28)), rtol=1e-6)
    np.testing.assert_allclose(data.inputs[0], np.broadcast_to(want[:, None, None], (3, 28, 28)), atol=0.05)


def test_center_crop_picks_the_middle(tmp_path):
    tall = np.arange(60, dtype=np.uint8).reshape(10, 6)           # 6 wide, 10 tall
    wide = np.arange(60, dtype=np.uint8).reshape(6, 10) + 100     # 10 wide, 6 tall
    save(tmp_path / "a" / "tall.png", tall)
    save(tmp_path / "a" / "wide.png", wide)
    data = load_image_folder(tmp_path, (1, 6, 6), dtype="uint8", preprocess="resize=6,scale=1")
    np.testing.assert_array_equal(data.inputs[0, 0], tall[2:8])    # shorter side already 6: no resampling
    np.testing.assert_array_equal(data.inputs[1, 0], wide[:, 2:8])
    odd = load_image_folder(tmp_path, (1, 5, 5), dtype="uint8", preprocess="resize=6,crop=5x5,scale=1,interp=nearest")
    np.testing.assert_array_equal(odd.inputs[0, 0], tall[2:7, 0:5])  # torchvision's offsets: round(4/2), round(1/2)


def test_preprocess_txt_is_honoured_and_the_given_spec_overrides_it(digit_folder):
    root, _ = digit_folder
    (root / "preprocess.txt").write_text("# this dataset's own preprocessing\nscale=1, mean=0.5  # keep raw\n")
    assert load_preprocess_file(root) == "scale=1, mean=0.5"
    plain = load_image_folder(root, (1, 16, 16), preprocess="scale=255")
    declared = load_image_folder(root, (1, 16, 16))
    np.testing.assert_allclose(declared.inputs, plain.inputs * 255 - 0.5, rtol=1e-6)
    assert "(from preprocess.txt)" in declared.source and "preprocess.txt" not in plain.source
    assert load_preprocess_file(root / "one") is None
    (root / "preprocess.txt").write_text("bogus=1\n")
    with pytest.raises(BadInput, match=r"preprocess\.txt: unknown key 'bogus'"):
        load_image_folder(root, (1, 16, 16))


# --- the spec ---------------------------------------------------------------------------------

def test_default_preprocessing_follows_the_model():
    assert parse_preprocess(None, (3, 224, 224)) == Preprocess(size=(224, 224), mode="RGB", mean=(0.0,) * 3,
                                                               std=(1.0,) * 3)
    gray = parse_preprocess("", (1, 28, 32))
    assert gray.size == (28, 32) and gray.mode == "L" and gray.sample_shape == (1, 28, 32)
    assert parse_preprocess("layout=NHWC", (28, 32, 3)).sample_shape == (28, 32, 3)


def test_imagenet_preset_and_overrides():
    p = parse_preprocess("imagenet", (3, 224, 224))
    assert p.describe() == ("resize 256, center-crop 224x224, RGB, /255, mean 0.485,0.456,0.406, "
                            "std 0.229,0.224,0.225, NCHW, bilinear")
    q = parse_preprocess("resize=232, IMAGENET, interp=bicubic, crop=224", (3, 224, 224))
    assert q.resize == 232 and q.interpolation == "bicubic" and q.mean == p.mean
    assert parse_preprocess("imagenet,resize=none", (3, 224, 224)).describe().startswith("resize 224x224, RGB")
    assert parse_preprocess("imagenet,mode=gray,mean=0.5,std=0.25", (1, 224, 224)).std == (0.25,)
    assert parse_preprocess("mean=0.5/0.4/0.3", (3, 8, 8)).mean == (0.5, 0.4, 0.3)


@pytest.mark.parametrize("spec, shape, needle", [
    ("crop=32x32", (3, 224, 224), "crop 32x32 .* model's input size 224x224"),
    ("zoom=2", (3, 8, 8), "unknown key 'zoom'.*known: resize, crop"),
    ("resize=abc", (3, 8, 8), "bad number 'abc' for resize"),
    ("scale=x", (3, 8, 8), "bad number 'x' for scale"),
    ("std=0.2/0", (3, 8, 8), "bad number '0.2/0' for std"),
    ("mean=0.1/0.2", (3, 8, 8), "mean has 2 values .* 3 channels"),
    ("imagenet", (1, 8, 8), "mode RGB .* gives 3 channels but the model takes 1"),
    ("imagenet,mode=gray", (1, 8, 8), "mean has 3 values .* 1 channel"),
    (None, (4, 8, 8), r"has 4 channels in NCHW layout; image data needs 1 \(gray\) or 3 \(RGB\)$"),
    ("layout=nhwc", (3, 8, 8), "has 8 channels in NHWC layout; .*use layout=nchw"),
    (None, (224, 224, 3), r"\(224, 224, 3\) has 224 channels in NCHW layout; .*add layout=nhwc"),
    (None, (3, 8), "is not an image"),
    ("resize=100", (3, 224, 224), "resize 100 .* smaller than the crop 224x224"),
    ("layout=nhcw", (3, 8, 8), "unknown layout 'nhcw'"),
    ("interp=lanczos", (3, 8, 8), "unknown interpolation 'lanczos'"),
    ("mode=cmyk", (3, 8, 8), "unknown mode 'cmyk'"),
    ("resize=10,resize=12", (3, 8, 8), "resize given twice"),
    ("fancy", (3, 8, 8), "malformed item 'fancy'.*KEY=VALUE"),
])
def test_bad_specs_are_one_line_errors(spec, shape, needle):
    with pytest.raises(BadInput, match=needle) as e:
        parse_preprocess(spec, shape)
    assert "\n" not in str(e.value)


# --- bad folders ------------------------------------------------------------------------------

def test_bad_folders_name_what_is_wrong(tmp_path, digit_folder):
    root, _ = digit_folder
    cases = []
    cases.append((tmp_path / "nope", "data folder not found: .*nope"))
    (tmp_path / "file.npz").write_bytes(b"")
    cases.append((tmp_path / "file.npz", "file.npz is not a folder"))
    flat = tmp_path / "flat"
    save(flat / "a.png", np.zeros((4, 4), dtype=np.uint8))
    cases.append((flat, "no class sub-folders in .*flat.*holds 1 images directly"))
    (tmp_path / "bare" / "cat").mkdir(parents=True)
    (tmp_path / "bare" / "dog").mkdir()
    (tmp_path / "bare" / "dog" / "x.txt").write_text("")
    cases.append((tmp_path / "bare", "no images in .*bare: its 2 class folders \\(cat, dog\\)"))
    (root / "empty_class").mkdir()
    cases.append((root, "class folder without images in .*: empty_class"))
    for path, needle in cases:
        with pytest.raises(BadInput, match=needle) as e:
            load_image_folder(path, (1, 16, 16))
        assert "\n" not in str(e.value)


def test_an_unreadable_image_is_named(digit_folder):
    root, _ = digit_folder
    (root / "two" / "broken.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    with pytest.raises(BadInput, match=r"cannot read image .*two/broken\.jpg: cannot identify image file"):
        load_image_folder(root, (1, 16, 16))


def test_a_16_bit_image_is_refused_rather_than_clipped(tmp_path):
    save(tmp_path / "a" / "deep.png", np.full((4, 4), 40000, dtype=np.uint16))
    with pytest.raises(BadInput, match=r"deep\.png: its mode I;16 is not 8-bit"):
        load_image_folder(tmp_path, (1, 4, 4))
