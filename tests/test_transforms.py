import numpy as np
import torch

from deeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


def _sample(h=40, w=30):
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 5:15] = 1
    mask[25:35, 10:25] = 2
    image = np.stack([mask * 100, mask * 50, 255 - mask * 100], axis=-1).astype(np.uint8)
    return image, mask


def _denormalise(tensor):
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((tensor * std + mean) * 255).round()


def test_train_crop_pads_mask_with_ignore_and_image_with_mean():
    image, mask = _sample()
    transform = train_transform(crop_size=64, scale_range=(1.0, 1.0), hflip=0.0)
    out_image, out_mask = transform(image, mask, seed=0)
    assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
    assert out_mask.shape == (64, 64) and out_mask.dtype == torch.int64
    padded = out_mask == 255
    assert padded.sum() == 64 * 64 - 40 * 30, "every padded pixel is ignore, never background"
    assert out_image[:, padded].abs().max() < 0.02, "padding is the mean pixel, 0 after normalising"


def test_train_transform_keeps_image_and_mask_aligned():
    image, mask = _sample(60, 50)
    transform = train_transform(crop_size=(48, 40), scale_range=(0.5, 2.0), hflip=0.5)
    checked = set()
    for seed in range(8):
        out_image, out_mask = transform(image, mask, seed=seed)
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 255}, "nearest interpolation keeps labels"
        red = _denormalise(out_image)[0]
        for cls in (0, 1, 2):
            region = out_mask == cls
            if region.sum() > 20:  # bilinear image edges blur; the bulk of each region must match
                assert (red[region] - cls * 100).abs().median() <= 2
                checked.add(cls)
    assert checked == {0, 1, 2}, "every class was compared in some crop (the check above is not vacuous)"


def test_seed_makes_augmentation_reproducible():
    image, mask = _sample(60, 50)
    transform = train_transform(crop_size=32)
    a, b = transform(image, mask, seed=7), transform(image, mask, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = transform(image, mask, seed=8)
    assert not torch.equal(a[0], c[0])


def test_eval_transform_is_full_resolution():
    image, mask = _sample(37, 53)
    out_image, out_mask = eval_transform()(image, mask)
    assert out_image.shape == (3, 37, 53) and torch.equal(out_mask, torch.from_numpy(mask).long())
    assert torch.allclose(_denormalise(out_image).permute(1, 2, 0), torch.from_numpy(image).float(), atol=1)


def test_colour_jitter_changes_only_the_image():
    image, mask = _sample()
    plain = train_transform(crop_size=40, scale_range=(1.0, 1.0), hflip=0.0)
    jitter = train_transform(crop_size=40, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.4)
    assert torch.equal(plain(image, mask, seed=1)[1], jitter(image, mask, seed=1)[1])
