"""Augmented views: deterministic for a seed, valid shapes and positions."""

from __future__ import annotations

import pytest
import torch

from training.augment import AugmentSpec, augment_view, stable_seed


def _crops(count: int = 10, size: int = 32) -> torch.Tensor:
    return torch.randint(
        0,
        256,
        (count, 3, size, size),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.uint8,
    )


def test_same_seed_same_view() -> None:
    spec = AugmentSpec(jpeg_p=1.0, blur_p=1.0)
    seed = stable_seed(3, "fake/a.mp4", 1)
    first, second = augment_view(_crops(), spec, seed), augment_view(_crops(), spec, seed)
    assert first.positions == second.positions
    assert torch.equal(first.crops, second.crops)


def test_stable_seed_depends_on_every_part() -> None:
    seeds = {
        stable_seed(0, "a", 1),
        stable_seed(1, "a", 1),
        stable_seed(0, "b", 1),
        stable_seed(0, "a", 2),
    }
    assert len(seeds) == 4
    assert stable_seed(0, "a", 1) == stable_seed(0, "a", 1) < 2**63


def test_views_differ_between_seeds() -> None:
    views = [augment_view(_crops(), AugmentSpec(), seed) for seed in range(6)]
    assert len({(tuple(v.positions), v.crops.float().sum().item()) for v in views}) > 1


@pytest.mark.parametrize("seed", range(8))
def test_shapes_and_positions(seed: int) -> None:
    spec = AugmentSpec(min_keep_fraction=0.5, drop_p=0.3)
    view = augment_view(_crops(10, 40), spec, seed)
    assert view.crops.dtype == torch.uint8
    assert view.crops.shape[1:] == (3, 40, 40)
    assert len(view.crops) == len(view.positions) >= 1
    assert view.positions == sorted(set(view.positions))
    assert view.positions[0] >= 0 and view.positions[-1] < 10
    assert view.positions[-1] - view.positions[0] + 1 >= 1


NO_AUGMENTATION = AugmentSpec(
    flip_p=0,
    brightness=0,
    contrast=0,
    saturation=0,
    jpeg_p=0,
    blur_p=0,
    min_keep_fraction=1.0,
    drop_p=0,
)


def test_identity_spec_keeps_everything() -> None:
    spec = NO_AUGMENTATION
    crops = _crops(5)
    view = augment_view(crops, spec, 1)
    assert view.positions == [0, 1, 2, 3, 4]
    assert torch.equal(view.crops, crops)


def test_flip_mirrors_every_frame() -> None:
    spec = NO_AUGMENTATION.model_copy(update={"flip_p": 1.0})
    crops = _crops(3)
    assert torch.equal(augment_view(crops, spec, 5).crops, crops.flip(-1))


def test_single_frame_and_bad_input() -> None:
    assert augment_view(_crops(1), AugmentSpec(drop_p=0.9), 0).positions == [0]
    with pytest.raises(ValueError):
        augment_view(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), AugmentSpec(), 0)
    with pytest.raises(ValueError):
        augment_view(torch.zeros(2, 3, 8, 8), AugmentSpec(), 0)
