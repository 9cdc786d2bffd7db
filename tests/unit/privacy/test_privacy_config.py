"""PrivacyConfig validation and the plan it leads to."""

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from fedretrain.config import ConfigError, TrainConfig
from fedretrain.privacy.config import AccountantKind, ClippingMode, PrivacyConfig
from fedretrain.privacy.plan import plan_training
from fedretrain.privacy.rdp import epsilon


def problems(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        PrivacyConfig(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_defaults_are_off_and_valid() -> None:
    cfg = PrivacyConfig()
    assert not cfg.enabled and cfg.clipping is ClippingMode.auto
    assert cfg.accountant is AccountantKind.rdp and cfg.delta == 1e-5


def test_enabled_needs_exactly_one_of_sigma_and_target() -> None:
    (message,) = problems(enabled=True)
    assert message.startswith("privacy: enabled=true needs exactly one of")
    assert "privacy.noise_multiplier" in message and "privacy.target_epsilon" in message
    (message,) = problems(enabled=True, noise_multiplier=1.0, target_epsilon=3.0)
    assert "got 1.0 and 3.0" in message
    assert PrivacyConfig(enabled=True, target_epsilon=3.0).noise_multiplier is None


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"noise_multiplier": -0.5}, "privacy.noise_multiplier=-0.5: must be a finite number >= 0"),
        ({"noise_multiplier": float("inf")}, "privacy.noise_multiplier=inf: must be a finite"),
        ({"target_epsilon": 0.0}, "privacy.target_epsilon=0.0: must be a positive number, e.g."),
        ({"delta": 0.0}, "privacy.delta=0.0: must lie in (0, 1), e.g. 1e-5"),
        ({"delta": 1.0}, "privacy.delta=1.0: must lie in (0, 1)"),
        ({"max_grad_norm": 0.0}, "privacy.max_grad_norm=0.0: must be a positive number"),
        ({"epsilon_budget": -1.0}, "privacy.epsilon_budget=-1.0: must be positive (e.g. 8.0)"),
        (
            {"target_epsilon": 5.0, "epsilon_budget": 4.0},
            "privacy.target_epsilon=5.0: exceeds privacy.epsilon_budget=4.0",
        ),
        ({"clipping": "fast"}, "privacy.clipping='fast': must be one of ['auto', 'flat', 'ghost']"),
        ({"accountant": "prv"}, "privacy.accountant='prv': must be one of ['rdp']"),
    ],
)
def test_each_bad_value_is_named_with_a_fix(kwargs: dict, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(**kwargs)), problems(**kwargs)


def test_all_problems_are_reported_at_once() -> None:
    found = problems(enabled=True, delta=2.0, max_grad_norm=-1.0, clipping="x")
    assert len(found) == 4


def test_strings_become_enums_as_from_yaml() -> None:
    assert PrivacyConfig(clipping="ghost").clipping is ClippingMode.ghost  # type: ignore[arg-type]


def test_hydra_structured_config_validates_on_to_object() -> None:
    schema = OmegaConf.structured(PrivacyConfig)
    good = OmegaConf.merge(schema, {"enabled": True, "target_epsilon": 2.0, "clipping": "ghost"})
    typed = OmegaConf.to_object(good)
    assert isinstance(typed, PrivacyConfig) and typed.clipping is ClippingMode.ghost
    bad = OmegaConf.merge(schema, {"enabled": True})
    with pytest.raises(ConfigError, match="privacy.noise_multiplier"):
        OmegaConf.to_object(bad)


def test_plan_interprets_epochs_as_expected_passes() -> None:
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.1)
    plan = plan_training(privacy, TrainConfig(batch_size=16, local_epochs=3), 1438)
    assert plan.sample_rate == 16 / 1438
    assert plan.steps == 3 * 90 and plan.expected_batch_size == pytest.approx(16)
    assert plan.composition[0].steps == 270 and plan.noise_multiplier == 1.1
    small = plan_training(privacy, TrainConfig(batch_size=16, local_epochs=2), 10)
    assert small.sample_rate == 1.0 and small.steps == 2  # full batches, one step per pass


def test_plan_spreads_a_target_over_the_cycle() -> None:
    privacy = PrivacyConfig(enabled=True, target_epsilon=2.0)
    cfg = SimpleNamespace(batch_size=32, local_epochs=1)
    one = plan_training(privacy, cfg, 2000)  # type: ignore[arg-type]
    five = plan_training(privacy, cfg, 2000, rounds_per_cycle=5)  # type: ignore[arg-type]
    assert five.noise_multiplier > one.noise_multiplier
    for plan in (one, five):
        assert 1.99 <= epsilon(plan.cycle_composition, 1e-5) <= 2.0


def test_plan_refuses_what_cannot_be_planned() -> None:
    with pytest.raises(ValueError, match="privacy.enabled is false"):
        plan_training(PrivacyConfig(), TrainConfig(), 100)
    with pytest.raises(ValueError, match="at least one record"):
        plan_training(PrivacyConfig(enabled=True, noise_multiplier=1.0), TrainConfig(), 0)
