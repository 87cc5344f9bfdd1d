import io

import numpy as np
import pytest
import torch
from PIL import Image

from facenet.data.images import fit_to_input, load_image, standardise, to_batch
from facenet.errors import BadImageError, DataError, FaceNetError


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def encode(array_or_img, fmt, **kw):
    img = array_or_img if isinstance(array_or_img, Image.Image) else Image.fromarray(array_or_img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("BMP", {}), ("PPM", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_lossless_formats_round_trip_exactly(rgb, fmt, kw):
    out = load_image(encode(rgb, fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_decodes_close_to_original():
    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    smooth[..., 1] = 90
    out = load_image(encode(smooth, "JPEG", quality=95))
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth).mean() < 3


def test_paths_bytes_pil_and_arrays_agree(tmp_path, rgb):
    path = tmp_path / "face.png"
    path.write_bytes(encode(rgb, "PNG"))
    for src in (path, str(path), path.read_bytes(), Image.open(path), rgb, rgb / 255.0, rgb.astype(np.uint16) * 257):
        out = load_image(src)
        np.testing.assert_array_equal(out, rgb)
        assert out.flags.writeable  # callers may augment in place


def test_greyscale_pgm_becomes_three_equal_channels():
    grey = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    out = load_image(encode(grey, "PPM"))  # Pillow writes mode L as PGM
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    np.testing.assert_array_equal(load_image(grey[:, :, None]), out)


def test_rgba_is_composited_on_black():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[0, :, 3] = 255
    rgba[1, 0, 3] = 0
    rgba[1, 1, 3] = 128
    rgba[1, 2, 3] = 255
    for src in (rgba, encode(rgba, "PNG")):
        out = load_image(src)
        np.testing.assert_array_equal(out[0], [[200, 100, 50]] * 3)
        np.testing.assert_array_equal(out[1, 0], [0, 0, 0])  # hidden colour does not leak
        np.testing.assert_array_equal(out[1, 1], np.round(np.array([200, 100, 50]) * 128 / 255))
        np.testing.assert_array_equal(out[1, 2], [200, 100, 50])


def test_palette_image_decodes_to_its_colours():
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    out = load_image(encode(img, "PNG"))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (0, 255, 0)
    gif = load_image(encode(img, "GIF"))
    np.testing.assert_array_equal(gif, out)


def test_16_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 257 * 100, 65535, 1000, 40000]], np.uint16)
    data = encode(values, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    expected = np.round(values / 257.0).astype(np.uint8)  # 65535/257 == 255 exactly
    np.testing.assert_array_equal(out[..., 0], expected)


def test_exif_orientation_is_applied(rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(rgb, "PNG", exif=exif)
    out = load_image(data)
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_bad_files_raise_named_errors(tmp_path, rgb):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(BadImageError, match="nope.jpg.*no such file"):
        load_image(missing)
    with pytest.raises(BadImageError, match="directory"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BadImageError, match="empty.png.*empty"):
        load_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("hello, not a picture")
    with pytest.raises(BadImageError, match="notes.jpg.*not a recognised image"):
        load_image(text)
    with pytest.raises(BadImageError, match="<bytes>"):
        load_image(b"\x00\x01garbage")
    with pytest.raises(BadImageError, match="cannot read an image from a int"):
        load_image(42)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_images_error_instead_of_loading_partially(fmt):
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(big, fmt)
    # (A PNG missing only its IEND/checksum trailer still holds every pixel; Pillow loads it, fine.)
    for cut in (len(data) // 2, len(data) * 19 // 20):
        with pytest.raises(BadImageError, match="<bytes>"):
            load_image(data[:cut])


def test_decompression_bombs_are_refused(monkeypatch, rgb):
    data = encode(rgb, "PNG")
    with pytest.raises(BadImageError, match="pixel limit"):
        load_image(data, max_pixels=100)
    assert load_image(data, max_pixels=rgb.shape[0] * rgb.shape[1]).shape == rgb.shape
    # Pillow's own guard (fires while parsing the header) is turned into the same error.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(BadImageError, match="too large"):
        load_image(data)


@pytest.mark.parametrize(
    "array,match",
    [
        (np.zeros((0, 5, 3), np.uint8), "zero size"),
        (np.zeros((4, 4, 2), np.uint8), "not an image"),
        (np.zeros((4, 4), np.int64), "unsupported pixel type"),
        (np.full((4, 4, 3), 200.0), r"\[0, 1\]"),
        (np.full((4, 4, 3), np.nan), "NaN"),
    ],
)
def test_bad_arrays(array, match):
    with pytest.raises(BadImageError, match=match):
        load_image(array)


def test_bad_image_error_is_a_project_error():
    assert issubclass(BadImageError, FaceNetError)


def test_fit_to_input_centre_crops_then_resizes():
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, :20] = [255, 0, 0]
    img[:, 20:80] = [0, 255, 0]
    img[:, 80:] = [0, 0, 255]
    same = fit_to_input(img, 60)
    np.testing.assert_array_equal(same, img[:, 20:80])
    small = fit_to_input(img, 16)
    assert small.shape == (16, 16, 3) and small.flags.writeable
    assert (small == [0, 255, 0]).all()  # no red/blue borders survive the centre crop
    # Downscaling averages (area-like): a 1-pixel checkerboard becomes mid grey, not aliased.
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    assert np.abs(fit_to_input(checker, 16).astype(int) - 127.5).max() < 3
    with pytest.raises(DataError):
        fit_to_input(img, 0)


def test_to_batch_stacks_as_nchw(rgb):
    batch = to_batch([rgb, 255 - rgb])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 24, 32)
    np.testing.assert_array_equal(batch[1].permute(1, 2, 0).numpy(), 255 - rgb)
    with pytest.raises(BadImageError, match="share one size"):
        to_batch([rgb, rgb[:10]])
    with pytest.raises(BadImageError):
        to_batch([])


def test_standardise_fixed_and_unit():
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    fixed = standardise(x)
    assert fixed.dtype == torch.float32 and fixed.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(fixed[0, 0].flatten().numpy(), (np.array([0, 127, 128, 255]) - 127.5) / 128)
    np.testing.assert_allclose(
        standardise(x.float(), "unit")[0, 0].flatten().numpy(), np.array([0, 127, 128, 255]) / 255, rtol=1e-6
    )


def test_standardise_prewhiten_matches_sandberg_formula(rgb):
    imgs = np.stack([rgb, rgb // 2 + 10])
    out = standardise(imgs, "prewhiten").numpy()
    for i, im in enumerate(imgs):
        x = im.astype(np.float64)
        ref = (x - x.mean()) / max(x.std(), 1.0 / np.sqrt(x.size))  # facenet.prewhiten, Sandberg
        np.testing.assert_allclose(out[i], ref.transpose(2, 0, 1), atol=1e-5)
    flat = standardise(np.full((1, 4, 4, 3), 77, np.uint8), "prewhiten")
    assert torch.isfinite(flat).all() and (flat == 0).all()


def test_standardise_accepts_numpy_nhwc_like_torch_nchw(rgb):
    imgs = np.stack([rgb, 255 - rgb])
    torch.testing.assert_close(standardise(imgs), standardise(to_batch(list(imgs))))


def test_standardise_rejects_bad_input(rgb):
    with pytest.raises(DataError, match="unknown standardisation"):
        standardise(to_batch([rgb]), "zscore")
    with pytest.raises(BadImageError):
        standardise(rgb)
    with pytest.raises(BadImageError):
        standardise(torch.zeros(1, 1, 4, 4))
