"""train.augment (issue 17, item 6): random shifts and small rotations of training images.

The shifts and right-angle rotations are checked against numpy (zero-filled slicing, rot90);
evaluation and the monitor's predictions are checked never to call the augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedretrain.augment import augment_batch, shift_rotate
from fedretrain.config import ConfigError, compose
from fedretrain.models import DigitsCNN
from fedretrain.preflight import to_typed
from fedretrain.tasks.digits import load_digits
from fedretrain.train_config import TrainConfig
from fedretrain.training import evaluate, predict, train

CPU = torch.device("cpu")


def shifted(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``image`` moved down ``rows`` and right ``cols`` pixels, zeros filling in (numpy)."""
    out = np.zeros_like(image)
    h, w = image.shape
    src = image[max(0, -rows) : h - max(0, rows), max(0, -cols) : w - max(0, cols)]
    out[max(0, rows) : max(0, rows) + src.shape[0], max(0, cols) : max(0, cols) + src.shape[1]] = (
        src
    )
    return out


def test_whole_pixel_shifts_match_numpy() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((12, 1, 8, 6)).astype(np.float32)  # not square: both axes checked
    rows = rng.integers(-3, 4, 12)
    cols = rng.integers(-3, 4, 12)
    out = shift_rotate(
        torch.from_numpy(images),
        torch.from_numpy(rows).float(),
        torch.from_numpy(cols).float(),
        torch.zeros(12),
    ).numpy()
    for i in range(12):
        expected = shifted(images[i, 0], int(rows[i]), int(cols[i]))
        np.testing.assert_allclose(out[i, 0], expected, atol=1e-5)


@pytest.mark.parametrize(("degrees", "k"), [(90.0, 1), (180.0, 2), (-90.0, -1)])
def test_right_angle_rotations_match_numpy(degrees: float, k: int) -> None:
    image = np.random.default_rng(1).random((3, 2, 7, 7)).astype(np.float32)
    angle = torch.full((3,), degrees)
    out = shift_rotate(torch.from_numpy(image), torch.zeros(3), torch.zeros(3), angle).numpy()
    np.testing.assert_allclose(out, np.rot90(image, k, axes=(2, 3)), atol=1e-5)


def test_a_batch_is_augmented_within_its_bounds_and_repeats_with_its_seed() -> None:
    x = torch.from_numpy(load_digits().x[:64])
    first = augment_batch(x, 2, 10.0, torch.Generator().manual_seed(3))
    again = augment_batch(x, 2, 10.0, torch.Generator().manual_seed(3))
    other = augment_batch(x, 2, 10.0, torch.Generator().manual_seed(4))
    assert first.shape == x.shape
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other) and not torch.allclose(first, x)
    # No shift and no rotation: the images as they were.
    torch.testing.assert_close(augment_batch(x, 0, 0.0, torch.Generator()), x)
    with pytest.raises(ValueError, match="set train.augment=false"):
        augment_batch(torch.zeros(4, 3), 2, 10.0, torch.Generator())


def test_only_training_is_augmented(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counted(*args):
        calls.append(args[0].shape[0])
        return augment_batch(*args)

    monkeypatch.setattr("fedretrain.training.augment_batch", counted)
    data = load_digits()
    data = type(data)(data.x[:96], data.y[:96], data.num_classes)
    cfg = TrainConfig(local_epochs=1, batch_size=32, augment=True)
    torch.manual_seed(0)
    plain, augmented = DigitsCNN((1, 8, 8), 10), DigitsCNN((1, 8, 8), 10)
    augmented.load_state_dict(plain.state_dict())
    train(plain, data, TrainConfig(local_epochs=1, batch_size=32), 0.05, CPU, torch.Generator())
    assert calls == []
    train(augmented, data, cfg, 0.05, CPU, torch.Generator())
    assert calls == [32, 32, 32]  # every training batch
    assert any(
        not torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), augmented.state_dict().values(), strict=True)
    )
    evaluate(augmented, data, CPU)
    predict(augmented, data, CPU)
    assert calls == [32, 32, 32]  # evaluation and the monitor's predictions see the images


def test_augment_on_a_task_without_images_fails_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match=r"train.augment=true: .* task sea_mlp"):
        to_typed(compose(["task=sea_mlp", "train.augment=true"]), build_targets=False)
    with pytest.raises(ConfigError, match="train.augment_degrees=200"):
        to_typed(compose(["train.augment_degrees=200"]), build_targets=False)
    typed = to_typed(compose(["train.augment=true"]), build_targets=False)  # digits: images
    assert typed.train.augment and typed.task.image
