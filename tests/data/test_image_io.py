"""Unreadable or truncated image files raise an error naming the file (and image id), from the
reading helper, from DetrDatasetMapper in training and test mode, and through a loader worker;
16-bit images are scaled, not clipped; a size that differs from the json says whether an EXIF
rotation explains it."""

import io

import numpy as np
import pytest
from detectron2.data import build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode
from PIL import Image

from detr_ext.data import DetrDatasetMapper
from detr_ext.data.image_io import (
    HighBitDepthError,
    ImageReadError,
    exif_orientation,
    read_image_file,
)


def _truncated_image(path, file_format):
    """An image file cut in half, as an interrupted copy or download leaves it."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)  # noise: no tiny encoding
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=file_format)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


@pytest.fixture(params=["JPEG", "PNG"])
def truncated(request, tmp_path):
    suffix = {"JPEG": "jpg", "PNG": "png"}[request.param]
    return _truncated_image(tmp_path / f"photo_0042.{suffix}", request.param)


def _dataset_dict(file_name):
    return {
        "file_name": file_name,
        "image_id": 42,
        "height": 64,
        "width": 80,
        "annotations": [
            {"bbox": [1, 2, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
        ],
    }


def test_read_image_file_names_the_file_and_cause(truncated):
    with pytest.raises(ImageReadError) as error:
        read_image_file(truncated, "RGB", image_id=42)
    message = str(error.value)
    assert repr(truncated) in message and "image_id=42" in message
    assert isinstance(error.value.__cause__, Exception)
    assert type(error.value.__cause__).__name__ in message


def test_read_image_file_reads_a_good_image(tmp_path):
    pixels = np.zeros((6, 5, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    Image.fromarray(pixels).save(tmp_path / "good.png")
    rgb = read_image_file(tmp_path / "good.png", "RGB")
    bgr = read_image_file(tmp_path / "good.png", "BGR")
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 200).all() and (bgr[..., 2] == 200).all()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ImageReadError, match="nowhere.jpg"):
        read_image_file(tmp_path / "nowhere.jpg")


@pytest.mark.parametrize("is_train", [True, False])
def test_mapper_names_a_truncated_file(truncated, is_train):
    mapper = DetrDatasetMapper([T.ResizeShortestEdge(32, 64)], is_train=is_train)
    with pytest.raises(ImageReadError) as error:
        mapper(_dataset_dict(truncated))
    assert repr(truncated) in str(error.value) and "image_id=42" in str(error.value)


def test_loader_worker_error_names_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (80, 64)).save(good)
    bad = _truncated_image(tmp_path / "broken.jpg", "JPEG")
    mapper = DetrDatasetMapper([T.ResizeShortestEdge(32, 64)], is_train=False)
    loader = build_detection_test_loader(
        [_dataset_dict(str(good)), _dataset_dict(bad)], mapper=mapper, num_workers=1
    )
    with pytest.raises(OSError) as error:
        for _ in loader:
            pass
    assert "broken.jpg" in str(error.value) and "truncated" in str(error.value)


def _ramp_16_bit(height=64, width=80):
    """uint16 [height, width]: 0 to 65535 across the image."""
    return np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)


def test_a_16_bit_png_is_scaled_to_8_bit_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255: a 0-65535 ramp came out 255 almost
    everywhere (13 distinct values). Scaled, it keeps its gradient."""
    values = _ramp_16_bit()
    path = tmp_path / "thermal.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")  # what the test is about

    image = read_image_file(path, "RGB")
    expected = np.rint(values * (255 / 65535)).astype(np.uint8)
    assert image.dtype == np.uint8 and image.shape == (64, 80, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)
    assert len(np.unique(image)) == 256
    # The mapper reads it the same way (BGR: the same grey in every channel).
    mapped = DetrDatasetMapper([T.NoOpTransform()], is_train=False, img_format="BGR")(
        {"file_name": str(path), "image_id": 1, "height": 64, "width": 80}
    )
    np.testing.assert_array_equal(mapped["image"][0].numpy(), expected)


def test_32_bit_images_in_16_bit_range_are_scaled_others_refused(tmp_path):
    values = _ramp_16_bit().astype(np.float32)
    good = tmp_path / "depth_in_range.tiff"
    Image.fromarray(values).save(good)  # mode "F"
    image = read_image_file(good, "RGB")
    np.testing.assert_array_equal(image[..., 0], np.rint(values * (255 / 65535)).astype(np.uint8))

    bad = tmp_path / "depth_metres.tiff"
    Image.fromarray(values - 1000.0).save(bad)  # negative values: not intensities
    with pytest.raises(HighBitDepthError, match=r"depth_metres\.tiff.* \(image_id=5\).*from -1000"):
        read_image_file(bad, "RGB", image_id=5)
    with pytest.raises(ImageReadError):  # HighBitDepthError is an ImageReadError (an OSError)
        read_image_file(bad, "RGB")


def _phone_photo(path, orientation=6):
    """A 100 x 60 px (width x height) JPEG stored unrotated, with an EXIF orientation tag
    (6: viewers rotate it 90 degrees clockwise, to 60 x 100 px). Left half bright."""
    pixels = np.zeros((60, 100, 3), dtype=np.uint8)
    pixels[:, :50] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return str(path)


def test_exif_rotation_that_explains_a_size_mismatch_is_named(tmp_path):
    """Labels drawn on the stored pixels by a tool that ignores EXIF: the json says 100 x 60,
    detectron2's EXIF-rotated image is 60 x 100. The error says why and what to set."""
    path = _phone_photo(tmp_path / "phone.jpg")
    assert exif_orientation(path) == 6
    record = {**_dataset_dict(path), "height": 60, "width": 100, "image_id": 9}
    mapper = DetrDatasetMapper([T.NoOpTransform()])
    with pytest.raises(
        SizeMismatchError,
        match=r"phone\.jpg' \(image_id=9\) is 60 x 100 px .* EXIF orientation \(6, .*"
        r"apply_exif_orientation=False",
    ):
        mapper(record)

    stored = DetrDatasetMapper([T.NoOpTransform()], apply_exif_orientation=False)(record)
    assert tuple(stored["image"].shape) == (3, 60, 100)
    assert stored["image"][0, :, :45].float().mean() > 200  # the stored left half is bright
    rotated = read_image_file(path, "RGB")
    assert rotated.shape == (100, 60, 3)


def test_a_plain_size_mismatch_says_both_sizes(tmp_path):
    path = tmp_path / "plain.png"
    Image.fromarray(np.zeros((64, 80, 3), dtype=np.uint8)).save(path)
    assert exif_orientation(path) is None
    record = {**_dataset_dict(str(path)), "height": 70, "width": 80}
    with pytest.raises(SizeMismatchError, match=r"is 80 x 64 px .* the dataset says 80 x 70"):
        DetrDatasetMapper([T.NoOpTransform()])(record)
