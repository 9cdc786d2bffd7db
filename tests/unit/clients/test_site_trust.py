"""A deployed site builds only targets from the packages its operator allows (issue 18, item 6):
a run config naming another package's code for the model or the data stream is refused before
anything of it is imported, with the target named and the agent option that would allow it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import monitor_handler
from fedretrain.config import compose, from_yaml, to_yaml
from fedretrain.deploy.agent import AgentOptions, node_config
from fedretrain.deploy.trust import check_site_config, parse_allowed
from fedretrain.flower.records import (
    ALLOWED_TARGETS_KEY,
    DATA_DIR_KEY,
    MONITOR_QUERY,
    SITE_ID_KEY,
    edges_record,
    instruction_config,
)
from fedretrain.monitor.stats import HistogramEdges

FOREIGN = "sitetrust_probe.Model"  # a module that records its own import


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    marker = tmp_path / "imported"
    (tmp_path / "sitetrust_probe.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nModel = None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sitetrust_probe", raising=False)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    return marker


def _query(config_yaml: str, ledger_dir: Path) -> Message:
    """The server's statistics query for period 0 (the model's arrays play no part here)."""
    config = instruction_config(config_yaml, num_rounds=3, period=0, ledger_dir=str(ledger_dir))
    config["server-round"] = 1
    edges = HistogramEdges(np.zeros((3, 0)))
    content = RecordDict({"arrays": ArrayRecord(), "config": config, "edges": edges_record(edges)})
    return Message(content=content, dst_node_id=1, message_type=MONITOR_QUERY)


def _deployed_yaml(*overrides: str) -> str:
    return to_yaml(compose(["scenario=deployed", "runtime.num_clients=1", *overrides]))


def _site(tmp_path: Path, allowed: str | None) -> Context:
    config: dict[str, object] = {DATA_DIR_KEY: str(tmp_path / "data"), SITE_ID_KEY: 0}
    if allowed is not None:
        config[ALLOWED_TARGETS_KEY] = allowed
    (tmp_path / "data").mkdir(exist_ok=True)
    return Context(1, 1, config, RecordDict(), {})  # type: ignore[arg-type]


def test_fedretrains_own_deployment_config_is_built() -> None:
    check_site_config(from_yaml(_deployed_yaml()), parse_allowed(None))  # no refusal


def test_a_foreign_model_target_is_refused_before_it_is_imported(
    tmp_path: Path, probe: Path
) -> None:
    config_yaml = _deployed_yaml(f"task.model._target_={FOREIGN}")
    with pytest.raises(PermissionError) as refused:
        monitor_handler(_query(config_yaml, tmp_path / "ledgers"), _site(tmp_path, None))
    message = str(refused.value)
    assert f"task.model={FOREIGN}" in message
    assert "--allow-targets fedretrain,sitetrust_probe" in message  # the way to allow it
    assert not probe.exists() and "sitetrust_probe" not in sys.modules


def test_an_operator_can_allow_a_package(tmp_path: Path, probe: Path) -> None:
    config_yaml = _deployed_yaml(f"task.model._target_={FOREIGN}")
    # Allowed, the site imports it (and fails later: this probe is no model factory).
    with pytest.raises(Exception) as built:
        monitor_handler(
            _query(config_yaml, tmp_path / "ledgers"), _site(tmp_path, "fedretrain,sitetrust_probe")
        )
    assert not isinstance(built.value, PermissionError)
    assert probe.exists()


def test_the_agent_passes_its_allowed_packages_to_the_clientapp(tmp_path: Path) -> None:
    options = AgentOptions(
        superlink="127.0.0.1:9092", data=tmp_path, site_id=3, ca=tmp_path / "ca.crt",
        key=tmp_path / "site.key", allow_targets=parse_allowed("fedretrain,mypkg"),
    )  # fmt: skip
    assert f'{ALLOWED_TARGETS_KEY}="fedretrain,mypkg"' in node_config(options, tmp_path / "l")
