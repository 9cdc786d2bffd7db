from pathlib import Path

import torch
from safetensors import safe_open

from fedretrain.model_io import load_state_dict, save_state_dict
from fedretrain.models import DigitsCNN


def test_save_and_load_round_trip_without_leftovers(tmp_path: Path) -> None:
    model = DigitsCNN((1, 8, 8), 10)
    path = tmp_path / "nested" / "model.safetensors"
    save_state_dict(model.state_dict(), path, metadata={"task": "digits_cnn"})
    loaded = load_state_dict(path)
    assert loaded.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded[key], value)
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"task": "digits_cnn"}
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_state_dict({"w": torch.zeros(3)}, path)
    save_state_dict({"w": torch.ones(3)}, path)
    torch.testing.assert_close(load_state_dict(path)["w"], torch.ones(3))
