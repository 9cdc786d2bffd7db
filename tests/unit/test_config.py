"""Every config composes and builds; bad values and misspelt keys fail early and say how to fix."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from fedretrain.config import (
    ConfigError,
    Device,
    Optimizer,
    check_override_keys,
    compose,
    from_yaml,
    to_yaml,
)
from fedretrain.preflight import to_typed
from fedretrain.simulate import main as simulate_main

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUP_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)
MIN_GROUP_FILES = 15  # a floor, so that a glob that silently finds nothing fails


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "table.csv"
    rows = ["a,b,label"] + [
        f"{i % 7},{(i * 3) % 11},{'yes' if i % 2 else 'no'}" for i in range(200)
    ]
    path.write_text("\n".join(rows))
    return path


def test_the_config_tree_is_found() -> None:
    assert len(GROUP_FILES) >= MIN_GROUP_FILES, [str(p) for p in GROUP_FILES]


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_group_option_composes_and_builds(path: Path, table_csv: Path) -> None:
    group = path.parent.relative_to(CONF).as_posix()
    overrides = [f"{group}={path.stem}"]
    node = OmegaConf.load(path)
    if "dataset" in node and OmegaConf.is_missing(node.dataset, "path"):
        overrides.append(f"task.dataset.path={table_csv}")
    if node.get("mode") in ("clustered", "oracle"):  # one model per concept needs drift
        overrides.append("scenario=sine_staggered")
    cfg = compose(overrides)
    run = to_typed(cfg)  # builds dataset, partition, model and strategy
    assert run.runtime.num_clients >= 1
    # What sites receive parses back to the same config.
    again = from_yaml(to_yaml(cfg))
    assert again.train == run.train and again.runtime == run.runtime


def test_defaults_are_typed() -> None:
    run = to_typed(compose([]))
    assert run.train.optimizer is Optimizer.sgd
    assert run.runtime.device is Device.auto
    assert run.runtime.torch_threads == 1


def test_unknown_optimizer_names_the_valid_options() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose(["train.optimizer=adamx"])
    assert "expected one of [sgd, adam, adamw]" in str(info.value.__cause__)


def test_all_range_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        to_typed(compose(["runtime.num_clients=0", "train.lr=-1", "runtime.fraction_train=1.5"]))
    text = str(info.value)
    assert "runtime.num_clients=0: must be at least 1" in text
    assert "train.lr=-1.0: must be positive" in text
    assert "runtime.fraction_train=1.5" in text
    assert len(info.value.problems) == 3


def test_more_sites_than_samples_is_caught_before_the_run() -> None:
    with pytest.raises(ConfigError, match="lower runtime.num_clients"):
        to_typed(compose(["runtime.num_clients=5000"]))


def test_cuda_requested_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="runtime.device=cuda: torch sees no CUDA"):
        to_typed(compose(["runtime.device=cuda"]))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.lrr=0.1"], "did you mean 'train.lr'?"),
        (["runtime.num_client=3"], "did you mean 'runtime.num_clients'?"),
        (["strategy=krum", "strategy.num_malicous_nodes=2"], "'strategy.num_malicious_nodes'?"),
        (["task=sea_mlp", "task.dataset.thta=9"], "did you mean 'task.dataset.theta'?"),
        (["strategy=fedavg,fedprox", "train.lrr=0.1"], "did you mean 'train.lr'?"),
    ],
)
def test_misspelt_keys_get_a_suggestion(overrides: list[str], expected: str) -> None:
    problems = check_override_keys(overrides)
    assert len(problems) == 1 and expected in problems[0]


def test_correct_keys_pass_the_key_check() -> None:
    assert (
        check_override_keys(["strategy=krum", "strategy.num_malicious_nodes=2", "train.lr=0.1"])
        == []
    )


def test_a_mandatory_key_can_be_set_by_its_name() -> None:
    # task.dataset.path is ??? in conf/task/tabular_file.yaml: OmegaConf's `in` says it is
    # absent, and the check used to reject the README's own command.
    overrides = ["task=tabular_file", "task.dataset.path=data.csv", "task.dataset.label_column=y"]
    assert check_override_keys(overrides) == []
    assert "did you mean" in check_override_keys(["task=tabular_file", "task.dataset.pth=x"])[0]


def test_target_arguments_are_checked_against_the_signature() -> None:
    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    cfg.task.model.hiden = 32
    cfg.task.model.num_classes = 3
    with pytest.raises(ConfigError) as info:
        to_typed(cfg)
    text = str(info.value)
    assert (
        "task.model.hiden: not an argument of fedretrain.models.DigitsCNN; did you mean 'hidden'?"
        in text
    )
    assert "task.model.num_classes: is set by fedretrain at run time" in text


def test_unimportable_target_is_reported() -> None:
    cfg = compose([])
    cfg.strategy._target_ = "flwr.serverapp.strategy.FedAvgg"
    with pytest.raises(
        ConfigError, match="strategy._target_=flwr.serverapp.strategy.FedAvgg: cannot be imported"
    ):
        to_typed(cfg)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train.optimizer=adamx"], "expected one of [sgd, adam, adamw]"),
        (["runtime.num_clients=0"], "runtime.num_clients=0: must be at least 1"),
        (["train.lrr=0.1"], "did you mean 'train.lr'?"),
    ],
)
def test_cli_exits_nonzero_before_any_simulation(
    args: list[str], message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["fedretrain-simulate", *args, f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as exited:
        simulate_main()
    out = capsys.readouterr()
    assert exited.value.code == 2
    assert message in out.err + out.out
    assert "[fedretrain]" not in out.out  # no round ran
    assert not run_dir.exists()  # not even Hydra's .hydra/ and an empty log (issue 16)


def test_help_says_what_fedretrain_is_before_hydra_s_lists() -> None:
    """Issue 16, item 6: ``--help`` was Hydra's default text ("simulate is powered by Hydra").
    A process of its own: Hydra's help configures logging for the whole interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "fedretrain", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("fedretrain-simulate: simulate a federation")
    assert "powered by Hydra" not in text
    assert text.index("scenario=sine_flip") < text.index("== Configuration groups ==")


def test_the_installed_entry_point_refuses_a_bad_value_the_same_way(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "fedretrain", "runtime.num_clients=0", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "runtime.num_clients=0: must be at least 1" in result.stderr
    assert not run_dir.exists()
