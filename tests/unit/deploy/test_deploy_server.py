"""What ``fedretrain server`` checks before it starts anything, and the app it submits."""

import importlib.util
from pathlib import Path

import pytest
import tomli

from fedretrain.deploy.server import (
    DeployError,
    ServerOptions,
    _overrides,
    check_config,
    serve,
    site_public_keys,
    write_app,
)
from fedretrain.deploy.stream import FolderStream
from server import app as server_app


def test_a_deployment_needs_the_folder_scenario() -> None:
    assert check_config(["scenario=deployed", "runtime.num_clients=3"]) == []
    problems = check_config(["scenario=sea_thresholds"])
    assert len(problems) == 1 and "scenario=deployed" in problems[0]
    assert "scenario=deployed" in check_config([])[0]  # no scenario at all


def test_bad_overrides_are_named() -> None:
    problems = check_config(["scenario=deployed", "scenario.period_secnds=5"])
    assert problems and "period_seconds" in problems[0]
    problems = check_config(["scenario=deployed", "scenario.period_seconds=-1"])
    assert problems and "period_seconds=-1.0: must be >= 0" in " ".join(problems)


def test_overrides_are_kept_for_a_restart_and_changes_refused(tmp_path: Path) -> None:
    first = _overrides(tmp_path, ["scenario=deployed"], num_sites=3)
    assert first == ["scenario=deployed", "runtime.num_clients=3"]
    assert _overrides(tmp_path, [], num_sites=5) == first  # a bare restart resumes as started
    assert _overrides(tmp_path, ["scenario=deployed"], num_sites=5) == first
    with pytest.raises(DeployError, match="restart it with the same overrides"):
        _overrides(tmp_path, ["scenario=deployed", "train.lr=0.5"], num_sites=3)
    explicit = _overrides(tmp_path / "other", ["runtime.num_clients=2"], num_sites=3)
    assert explicit == ["runtime.num_clients=2"]


def test_missing_credentials_fail_before_anything_starts(tmp_path: Path) -> None:
    options = ServerOptions(run_dir=tmp_path / "run", creds=tmp_path / "creds")
    with pytest.raises(DeployError, match="fedretrain certs init"):
        serve(options)
    assert not (tmp_path / "run").exists()


def test_site_keys_are_found_by_their_public_halves(tmp_path: Path) -> None:
    for name in ("site-1", "site-0"):
        (tmp_path / f"{name}.pub").write_text("ecdsa-sha2-nistp384 AAAA")
        (tmp_path / f"{name}.key").write_text("private")
    (tmp_path / "ca.crt").write_text("cert")
    keys = site_public_keys(tmp_path)
    assert [k.site for k in keys] == ["site-0", "site-1"]
    assert keys[0].private_key == tmp_path / "site-0.key"


def test_the_submitted_app_declares_our_components_and_run_config(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "app")
    project = tomli.loads((folder / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert set(app["config"]) == {"overrides", "run-dir", "resume"}
    module, _, name = app["components"]["serverapp"].partition(":")
    shim = (folder / f"{module}.py").read_text()
    assert f"as {name}" in shim and "from server.app import app" in shim
    # and the shim, imported as Flower would, names our ServerApp itself
    spec = importlib.util.spec_from_file_location(module, folder / f"{module}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    assert getattr(loaded, name) is server_app.app


def test_the_folder_stream_has_no_simulated_samples() -> None:
    stream = FolderStream(features=["a", "b"], label="y", labels=["no", "yes"])
    assert stream.input_shape == (2,) and stream.num_classes == 2
    with pytest.raises(NotImplementedError, match="fedretrain server"):
        stream.sample(0, 10, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_age_s"):
        FolderStream(features=["a"], label="y", labels=[0, 1], min_age_s=-1)
