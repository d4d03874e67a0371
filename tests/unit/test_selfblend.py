"""Self-blended fakes: the mask is a soft face region in [0, 1], the blend changes the crop only
where the mask is positive, and a seed fixes everything."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.selfblend import BlendSpec, blend_mask, draw_blend, self_blend

SPEC = BlendSpec()


def _crop(seed: int, size: int = 48) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([32, 48, 64]))
def test_mask_is_a_soft_region_in_range(seed: int, size: int) -> None:
    mask = blend_mask(draw_blend(size, SPEC, np.random.default_rng(seed)))
    assert mask.shape == (size, size) and mask.dtype == torch.float32
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    assert float(mask[size // 2, size // 2]) > 0.0  # the face centre is blended
    assert float(mask[0, 0]) < 0.05  # the corners (background) hardly are
    assert float(mask.max()) >= 0.99 * min(SPEC.ratios)  # the blur may shave the peak a little


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_blend_changes_the_crop_only_inside_the_mask(seed: int) -> None:
    crop = _crop(seed % 1000)
    blended = self_blend(crop, SPEC, np.random.default_rng(seed))
    changed = (blended.image != crop).any(dim=0)
    assert blended.image.dtype == torch.uint8 and blended.image.shape == crop.shape
    assert not bool((changed & (blended.mask == 0)).any())
    assert bool(changed.any())


def test_a_seed_fixes_the_blend() -> None:
    crop = _crop(0)
    first = self_blend(crop, SPEC, np.random.default_rng(7))
    again = self_blend(crop, SPEC, np.random.default_rng(7))
    other = self_blend(crop, SPEC, np.random.default_rng(8))
    assert torch.equal(first.image, again.image) and torch.equal(first.mask, again.mask)
    assert not torch.equal(first.mask, other.mask)
