"""Multi-crop augmentation of DINO: 2 global views and several small local views of one image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import v2

__all__ = ["MultiCropAugmentation"]

# The detectors' normalization (RGB, 0-255 scale), so pretrained weights see the same inputs.
_PIXEL_MEAN = (123.675, 116.280, 103.530)
_PIXEL_STD = (58.395, 57.120, 57.375)


def _blur_kernel(size: int) -> int:
    """An odd Gaussian kernel about a tenth of the crop (DINO: 23 px at 224)."""
    return max(3, (size // 10) | 1)


class MultiCropAugmentation:
    """Turn one RGB image into DINO's views.

    Every view: ``RandomResizedCrop`` (bicubic), horizontal flip, color distortion
    (``ColorJitter`` with probability 0.8 and ``RandomGrayscale`` with probability 0.2), Gaussian
    blur, then ``(pixel - pixel_mean) / pixel_std`` on the 0-255 scale. As in DINO the first
    global view is always blurred; the second is blurred with probability 0.1 and solarized
    with probability 0.2; local views are blurred with probability 0.5. Randomness comes from
    torch's global RNG, so ``torch.manual_seed`` makes the views reproducible.

    Args:
        global_size: side of the square global views.
        local_size: side of the square local views.
        num_local: number of local views (0 for global views only).
        global_scale: ``(min, max)`` fraction of the image area a global view covers.
        local_scale: ``(min, max)`` fraction of the image area a local view covers.
        flip: random horizontal flips.
        color_jitter: jitter strength ``s`` (brightness and contrast ``s``, saturation
            ``s / 2``, hue ``s / 4``); 0 turns the color distortion (jitter and grayscale) off.
        pixel_mean, pixel_std: per-channel RGB normalization on the 0-255 scale; the
            defaults are the detectors' (``configs/common/models/detr_r50.py``).
    """

    def __init__(
        self,
        global_size: int = 128,
        local_size: int = 64,
        num_local: int = 4,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        flip: bool = True,
        color_jitter: float = 0.4,
        pixel_mean: Sequence[float] = _PIXEL_MEAN,
        pixel_std: Sequence[float] = _PIXEL_STD,
    ) -> None:
        for name, size in (("global_size", global_size), ("local_size", local_size)):
            if not isinstance(size, int) or size <= 0:
                raise ValueError(
                    f"MultiCropAugmentation: expected {name} to be a positive int, got {size!r}"
                )
        if not isinstance(num_local, int) or num_local < 0:
            raise ValueError(f"MultiCropAugmentation: expected num_local >= 0, got {num_local!r}")
        for name, scale in (("global_scale", global_scale), ("local_scale", local_scale)):
            if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
                raise ValueError(
                    f"MultiCropAugmentation: expected {name} = (min, max) with "
                    f"0 < min <= max <= 1, got {tuple(scale)}"
                )
        if not 0.0 <= color_jitter <= 1.0:
            raise ValueError(
                f"MultiCropAugmentation: expected color_jitter in [0, 1], got {color_jitter!r}"
            )
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                "MultiCropAugmentation: expected 3 RGB values in pixel_mean and pixel_std, got "
                f"{len(pixel_mean)} and {len(pixel_std)}"
            )
        if min(pixel_std) <= 0:
            raise ValueError(
                f"MultiCropAugmentation: expected pixel_std > 0, got {tuple(pixel_std)}"
            )
        self.global_size = global_size
        self.local_size = local_size
        self.num_local = num_local

        def view(size: int, scale: Sequence[float], blur_p: float, solarize_p: float) -> v2.Compose:
            steps: list[torch.nn.Module] = [
                v2.RandomResizedCrop(
                    size,
                    scale=tuple(scale),
                    interpolation=v2.InterpolationMode.BICUBIC,
                    antialias=True,
                )
            ]
            if flip:
                steps.append(v2.RandomHorizontalFlip(p=0.5))
            if color_jitter > 0:
                jitter = v2.ColorJitter(
                    brightness=color_jitter,
                    contrast=color_jitter,
                    saturation=color_jitter / 2,
                    hue=color_jitter / 4,
                )
                steps += [v2.RandomApply([jitter], p=0.8), v2.RandomGrayscale(p=0.2)]
            if blur_p > 0:
                blur = v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))
                steps.append(v2.RandomApply([blur], p=blur_p))
            if solarize_p > 0:
                steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
            steps += [
                v2.ToDtype(torch.float32, scale=False),
                v2.Normalize(mean=list(map(float, pixel_mean)), std=list(map(float, pixel_std))),
            ]
            return v2.Compose(steps)

        self.global_views = [
            view(global_size, global_scale, blur_p=1.0, solarize_p=0.0),
            view(global_size, global_scale, blur_p=0.1, solarize_p=0.2),
        ]
        self.local_view = view(local_size, local_scale, blur_p=0.5, solarize_p=0.0)

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        """``image``: ``[H, W, 3]`` uint8 RGB -> ``2 + num_local`` float32 tensors: 2 global
        ``[3, global_size, global_size]``, then local ``[3, local_size, local_size]``."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise TypeError(f"MultiCropAugmentation: expected a uint8 numpy image, got {got}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"MultiCropAugmentation: expected an [H, W, 3] RGB image, got {image.shape}"
            )
        # A copy: decoded images may be read-only arrays, which torch.from_numpy warns about.
        chw = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
        views = [transform(chw) for transform in self.global_views]
        views += [self.local_view(chw) for _ in range(self.num_local)]
        return views
