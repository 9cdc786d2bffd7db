"""Fine-tuning (issue 17, item 1): a pretrained start read without unpickling, checked against
the model's names and shapes; frozen parameters that never change; learning-rate groups; and
the compose-time errors of each setting. Oracles: the file's own tensors, autograd gradients
and the closed form of one SGD step."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fedretrain.config import compose, to_yaml
from fedretrain.errors import ConfigError
from fedretrain.finetune import (
    Frozen,
    freeze,
    frozen_names,
    load_pretrained,
    load_travelling,
    lr_scales,
    read_state,
    travelling_state,
)
from fedretrain.models import DigitsCNN
from fedretrain.preflight import to_typed
from fedretrain.site import TaskModels, model_for
from fedretrain.tasks.digits import load_digits
from fedretrain.train_config import Optimizer, TrainConfig
from fedretrain.training import train

CPU = torch.device("cpu")


def cnn(classes: int = 10, seed: int = 0) -> DigitsCNN:
    torch.manual_seed(seed)
    return DigitsCNN((1, 8, 8), classes)


def saved(tmp_path: Path, model: nn.Module, name: str = "pre.safetensors") -> Path:
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    else:
        torch.save(model.state_dict(), path)
    return path


# ---------------------------------------------------------------------- the pretrained file


@pytest.mark.parametrize("name", ["pre.safetensors", "pre.pt"])
def test_a_pretrained_file_is_loaded_array_for_array(tmp_path: Path, name: str) -> None:
    source = cnn(seed=1)
    path = saved(tmp_path, source, name)
    target = cnn(seed=2)
    report = load_pretrained(target, path)
    assert not report.partial and len(report.loaded) == len(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_checkpoint_keeping_its_state_dict_under_a_key_is_read(tmp_path: Path) -> None:
    source = cnn(seed=1)
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, tmp_path / "ckpt.pt")
    state = read_state(tmp_path / "ckpt.pt")
    assert sorted(state) == sorted(source.state_dict())


def test_strict_loading_lists_every_mismatch(tmp_path: Path) -> None:
    five = cnn(classes=5)
    state = {k: v for k, v in five.state_dict().items() if k != "features.0.bias"}
    state["extra.weight"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "five.safetensors")
    target = cnn()
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ConfigError) as err:
        load_pretrained(target, tmp_path / "five.safetensors")
    text = "\n".join(err.value.problems)
    assert "shape differs, classifier.2.weight: file (5, 64), model (10, 64)" in text
    assert "classifier.2.bias: file (5,), model (10,)" in text
    assert "features.0.bias is missing from the file" in text
    assert "the file's extra.weight is not in the model" in text
    assert "task.model.strict=false" in text
    for key, value in before.items():  # nothing was loaded
        assert torch.equal(target.state_dict()[key], value)


def test_a_partial_load_keeps_the_new_head_and_reports_it(tmp_path: Path) -> None:
    five = cnn(classes=5, seed=1)
    path = saved(tmp_path, five)
    target = cnn(seed=2)
    head = target.state_dict()["classifier.2.weight"].clone()
    report = load_pretrained(target, path, strict=False)
    assert report.kept == ("classifier.2.weight", "classifier.2.bias")
    assert "kept 2 at their initialisation (classifier.2.weight, classifier.2.bias)" in (
        report.line()
    )
    assert torch.equal(target.state_dict()["classifier.2.weight"], head)
    assert torch.equal(
        target.state_dict()["features.0.weight"], five.state_dict()["features.0.weight"]
    )


def test_a_file_that_fits_nothing_is_refused_even_when_not_strict(tmp_path: Path) -> None:
    save_file({"other.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="none of the file's 1 arrays fits the model"):
        load_pretrained(cnn(), tmp_path / "other.safetensors", strict=False)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"w": _Payload(marker)}, handle, protocol=2)
    with pytest.raises(ConfigError, match="weights_only=True"):
        read_state(path)
    assert not marker.exists()


def test_a_damaged_or_missing_file_gets_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        read_state(tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="no such file"):
        read_state(tmp_path / "absent.safetensors")


# ---------------------------------------------------------------------- freeze, lr groups


def test_freeze_takes_names_prefixes_and_patterns() -> None:
    model = cnn()
    frozen = freeze(model, ["features.0", "classifier.*.bias"])
    assert frozen == (
        "features.0.weight",
        "features.0.bias",
        "classifier.0.bias",
        "classifier.2.bias",
    )
    assert frozen_names(model) == frozen


def test_freeze_refuses_a_pattern_that_matches_nothing_and_freezing_everything() -> None:
    with pytest.raises(ConfigError, match="'feature' matches no parameter"):
        freeze(cnn(), ["feature"])
    with pytest.raises(ConfigError, match="nothing would train"):
        freeze(cnn(), ["*"])


def test_frozen_parameters_do_not_change_in_training() -> None:
    model = cnn()
    freeze(model, ["features"])
    before = copy.deepcopy(model.state_dict())
    data = load_digits().subset(np.arange(64))
    cfg = TrainConfig(lr=0.1, weight_decay=0.01, local_epochs=2, proximal_mu=0.1)
    train(model, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(0), proximal_mu=0.1)
    for key, value in model.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed is not key.startswith("features"), key


def test_a_learning_rate_group_scales_one_sgd_step_exactly() -> None:
    """One full-batch SGD step without momentum: w' = w - lr * s * grad, grad by autograd."""
    data = load_digits().subset(np.arange(32))
    start = cnn()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    loss = nn.functional.cross_entropy(start(x), y)
    grads = dict(
        zip(
            [n for n, _ in start.named_parameters()],
            torch.autograd.grad(loss, list(start.parameters())),
            strict=True,
        )
    )
    cfg = TrainConfig(
        optimizer=Optimizer.sgd, lr=0.2, momentum=0.0, local_epochs=1, batch_size=32,
        lr_groups=["features:0.1", "classifier.2.bias:3"],
    )  # fmt: skip
    model = copy.deepcopy(start)
    train(model, data, cfg, cfg.lr, CPU, torch.Generator().manual_seed(0))
    scale = {"classifier.2.bias": 3.0}
    for name, param in model.named_parameters():
        s = 0.1 if name.startswith("features") else scale.get(name, 1.0)
        expected = start.state_dict()[name] - 0.2 * s * grads[name]
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


def test_lr_groups_must_name_trainable_parameters() -> None:
    model = cnn()
    freeze(model, ["features"])
    assert lr_scales(model, {"classifier.0": 0.5}) == [0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ConfigError, match="'features' matches no parameter"):
        lr_scales(model, {"features": 0.1})


# ---------------------------------------------------------------------- what travels


def test_only_trainable_arrays_travel_and_the_frozen_ones_are_checked() -> None:
    model = cnn()
    freeze(model, ["features"])
    sent = travelling_state(model)
    assert sorted(sent) == sorted(k for k in model.state_dict() if not k.startswith("features"))
    other = cnn(seed=3)
    freeze(other, ["features"])
    with pytest.raises(ValueError, match="frozen arrays .* are not the server's"):
        load_travelling(other, sent, Frozen.of(model).digest)
    receiver = cnn()
    freeze(receiver, ["features"])
    update = {k: v + 1 for k, v in sent.items()}
    load_travelling(receiver, update, Frozen.of(model).digest)
    assert torch.equal(receiver.state_dict()["classifier.2.bias"], update["classifier.2.bias"])
    with pytest.raises(ValueError, match="unexpected \\['features.0.weight'\\]"):
        load_travelling(
            receiver,
            {**update, "features.0.weight": torch.zeros(16, 1, 3, 3)},
            Frozen.of(model).digest,
        )


def test_frozen_merge_keeps_the_sent_arrays_in_their_order() -> None:
    weights = {"a": np.zeros(2), "b": np.ones(2), "c": np.full(2, 2.0)}
    frozen = Frozen(frozenset({"b"}), "x")
    assert list(frozen.outgoing(weights)) == ["a", "c"]
    merged = frozen.merged(weights, {"a": np.full(2, 5.0), "c": np.full(2, 7.0)})
    assert list(merged) == ["a", "b", "c"] and merged["b"] is weights["b"]
    assert merged["a"].tolist() == [5.0, 5.0]


# ---------------------------------------------------------------------- the run's config


def test_every_fine_tuning_setting_is_checked_before_anything_starts(tmp_path: Path) -> None:
    five = saved(tmp_path, cnn(classes=5))
    with pytest.raises(ConfigError) as err:
        to_typed(
            compose(
                [
                    f"task.model.pretrained={five}",
                    "train.freeze=[feature]",
                    "train.lr_groups=[classifier:0]",
                ]
            )
        )
    text = "\n".join(err.value.problems)
    assert "lr_groups entry 'classifier:0'" in text  # the schema's check, first
    with pytest.raises(ConfigError) as err:
        to_typed(compose([f"task.model.pretrained={five}", "train.freeze=[feature]"]))
    text = "\n".join(err.value.problems)
    assert "shape differs, classifier.2.weight" in text and "'feature' matches no parameter" in text


def test_the_server_and_the_sites_build_the_same_frozen_arrays(tmp_path: Path) -> None:
    five = saved(tmp_path, cnn(classes=5, seed=4))
    node = compose(
        [f"task.model.pretrained={five}", "task.model.strict=false", "train.freeze=[features]"]
    )
    cfg = to_typed(node)
    models = TaskModels(cfg, (1, 8, 8), 10)
    site = model_for(cfg, (1, 8, 8), 10)
    assert Frozen.of(site).digest == models.frozen.digest
    reinit = models.fresh(seed=99)  # a re-initialisation keeps the run's frozen arrays
    for name in models.frozen.names:
        assert np.array_equal(reinit[name], site.state_dict()[name].numpy()), name
    assert not np.array_equal(
        reinit["classifier.2.weight"], site.state_dict()["classifier.2.weight"].numpy()
    )
    assert models.trained == (
        "classifier.0.weight",
        "classifier.0.bias",
        "classifier.2.weight",
        "classifier.2.bias",
    )


def test_a_relative_pretrained_path_travels_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved(tmp_path, cnn())
    monkeypatch.chdir(tmp_path)
    node = compose(["task.model.pretrained=pre.safetensors"])
    assert f"pretrained: {tmp_path / 'pre.safetensors'}" in to_yaml(node)
    assert node.task.model.pretrained == "pre.safetensors"  # the caller's config is untouched
