"""Models DP-SGD cannot train are fixed (BatchNorm -> GroupNorm) or refused with a fix."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fedretrain.config import TrainConfig
from fedretrain.models import MLP, DigitsCNN
from fedretrain.privacy.config import ClippingMode, PrivacyConfig
from fedretrain.privacy.dp_sgd import dp_train
from fedretrain.privacy.ledger import PrivacyLedger
from fedretrain.privacy.opacus_adapter import (
    IncompatibleModelError,
    compatibility_problems,
    make_compatible,
)
from fedretrain.tasks.digits import load_digits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bn_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, 10),
    )


def test_batchnorm_becomes_groupnorm_and_the_original_is_left_alone() -> None:
    model = bn_cnn()
    assert compatibility_problems(model)
    fixed = make_compatible(model)
    assert fixed is not model and isinstance(fixed, nn.Sequential)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fixed.modules())
    (norm,) = [m for m in fixed.modules() if isinstance(m, nn.GroupNorm)]
    assert norm.num_channels == 8
    assert compatibility_problems(fixed) == []
    assert isinstance(model[1], nn.BatchNorm2d)  # the caller's model is unchanged
    torch.testing.assert_close(fixed[0].weight, model[0].weight)  # other layers keep weights


def test_refused_with_a_message_that_says_how_to_fix_it() -> None:
    with pytest.raises(IncompatibleModelError) as info:
        make_compatible(bn_cnn(), fix=False)
    message = str(info.value)
    assert "BatchNorm cannot support training with differential privacy" in message
    assert "set privacy.fix_model=true" in message
    assert "GroupNorm" in message and "make_compatible" in message


@pytest.mark.parametrize(
    "model", [DigitsCNN((1, 8, 8), 10), MLP((3,), 2), nn.Sequential(nn.Linear(4, 2))]
)
def test_compatible_models_are_untouched(model: nn.Module) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert make_compatible(model) is model
    assert make_compatible(model, fix=False) is model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("clipping", list(ClippingMode))
def test_dp_train_refuses_an_unfixed_model_and_trains_the_fixed_one(
    clipping: ClippingMode,
) -> None:
    data = load_digits().subset(np.arange(48))
    cfg = TrainConfig(batch_size=16, local_epochs=1)
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0, clipping=clipping)
    ledger = PrivacyLedger("0")
    args = (data, cfg, privacy, cfg.lr, torch.device("cpu"), torch.Generator(), ledger, "v1")
    with pytest.raises(IncompatibleModelError, match="make_compatible"):
        dp_train(bn_cnn(), *args)
    assert ledger.entries == ()
    fixed = make_compatible(bn_cnn())
    before = [p.detach().clone() for p in fixed.parameters()]
    result = dp_train(fixed, *args)
    assert result.train.steps == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, fixed.parameters(), strict=True))


def test_importing_dp_sgd_leaves_the_root_logger_alone() -> None:
    # opacus.utils.module_utils calls logging.basicConfig() at import; a fresh interpreter
    # shows whether our import (dp_sgd imports the Opacus adapter) undoes it.
    code = (
        "import logging; before = list(logging.getLogger().handlers); "
        "import fedretrain.privacy.dp_sgd; "
        "assert logging.getLogger().handlers == before, logging.getLogger().handlers; "
        "assert logging.getLogger().level == logging.WARNING"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
