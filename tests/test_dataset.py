import numpy as np
import pytest
from PIL import Image

from conftest import palette_png
from deeplab.data.dataset import DataError, SegmentationDataset, build_lut, read_image, read_mask


def test_read_image_greyscale_rgba_16bit_all_arrive_as_rgb_uint8(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.zeros((12, 10, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    sixteen = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    for name in ("grey.png", "rgba.png", "deep.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    assert (read_image(tmp_path / "grey.png")[..., 1] == grey).all()
    assert (read_image(tmp_path / "rgba.png")[0, 0] == [200, 0, 0]).all()  # RGB order, alpha dropped
    assert read_image(tmp_path / "deep.png").max() == sixteen.max() >> 8


@pytest.mark.parametrize("size", [(20, 40), (30, 30)], ids=["non-square", "square"])
def test_exif_rotated_image_is_read_in_raw_pixel_order_like_its_mask(tmp_path, size):
    raw = np.zeros((*size, 3), np.uint8)
    raw[:, :10] = 255  # white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a viewer shows the band on top
    Image.fromarray(raw).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(tmp_path / "rot.jpg").getexif()[0x0112] == 6
    mask = np.zeros(size, np.uint8)
    mask[:, :10] = 1  # annotated on the stored pixels, as annotation tools do (PIL reads masks unrotated)
    palette_png(tmp_path / "rot.png", mask)
    image, loaded = SegmentationDataset([(tmp_path / "rot.jpg", tmp_path / "rot.png")], num_classes=2).load(0)
    assert image.shape == (*size, 3)
    assert image[:, :8].mean() > 200 and image[:, 12:].mean() < 50, "the EXIF rotation must not be applied"
    assert (loaded == mask).all()


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=r"bad.jpg: not a readable image"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(DataError, match=r"gone.jpg: cannot read image file"):
        read_image(tmp_path / "gone.jpg")


def test_palette_greyscale_and_rgb_masks(tmp_path):
    mask = np.array([[0, 1, 2], [255, 3, 4]], np.uint8)
    palette = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    palette_png(tmp_path / "p.png", mask)
    Image.fromarray(mask).save(tmp_path / "g.png")
    colours = np.array(palette + [[0, 0, 0]] * 250 + [[224, 224, 192]], np.uint8)[mask]
    Image.fromarray(colours).save(tmp_path / "rgb.png")
    Image.fromarray(np.repeat(mask[..., None], 3, axis=2)).save(tmp_path / "grey_as_rgb.png")
    for name in ("p.png", "g.png", "grey_as_rgb.png"):
        assert (read_mask(tmp_path / name, num_classes=5) == mask).all(), name
    got = read_mask(tmp_path / "rgb.png", num_classes=5, palette=palette, ignore_colour=[224, 224, 192])
    assert (got == mask).all()


def test_rgb_mask_with_unknown_colour_names_file_and_colour(tmp_path):
    colours = np.zeros((4, 4, 3), np.uint8)
    colours[0, 0] = [10, 20, 30]
    Image.fromarray(colours).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"odd.png: RGB mask has 1 colour\(s\) not in the dataset palette, e.g. \(10, 20, 30\)"):
        read_mask(tmp_path / "odd.png", num_classes=2, palette=[[0, 0, 0], [255, 255, 255]])
    with pytest.raises(DataError, match="odd.png: mask is a colour .* no palette"):
        read_mask(tmp_path / "odd.png", num_classes=2)


def test_label_values_outside_the_classes_are_named(tmp_path):
    Image.fromarray(np.array([[0, 1, 7, 30]], np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m.png: label values \[7, 30\] are outside the 5 classes"):
        read_mask(tmp_path / "m.png", num_classes=5)
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match="wide.png: .* values up to 300"):
        read_mask(tmp_path / "wide.png", num_classes=5)


def test_label_map_remaps_before_checking(tmp_path):
    Image.fromarray(np.array([[0, 255, 255]], np.uint8)).save(tmp_path / "bin.png")
    assert read_mask(tmp_path / "bin.png", num_classes=2, lut=build_lut({255: 1})).tolist() == [[0, 1, 1]]
    assert build_lut(None) is None


def test_mask_of_another_size_names_both_files(tmp_path):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "a.png")
    palette_png(tmp_path / "a_mask.png", np.zeros((10, 11), np.uint8))
    dataset = SegmentationDataset([(tmp_path / "a.png", tmp_path / "a_mask.png")], num_classes=2)
    with pytest.raises(DataError, match=r"a_mask.png: mask is 11x10 \(WxH\) but its image .*a.png is 12x10"):
        dataset[0]


def test_getitem_without_transform_returns_tensors(voc_root):
    from deeplab.data.voc import voc_samples

    dataset = SegmentationDataset(voc_samples(root=voc_root, split="train"), num_classes=5)
    image, mask = dataset[0]
    assert image.shape[0] == 3 and image.shape[1:] == mask.shape and mask.dtype.is_floating_point is False
