"""Every command in README.md and docs/ that a user pastes (issue 16, item 6).

Each ``bash`` block is read as a user would paste it. A simulation command must name only keys
that exist and compose into a config that passes every check a run makes before it starts (a
long run is not run here: the integration tests run the scenarios); ``fedretrain compare``
must accept its arguments and config; every ``fedretrain`` subcommand must parse as written,
and the registry's read-only ones run on a real registry. Deployment processes (``flwr``,
``flower-superlink``, ``flower-supernode``) are exercised by tests/deploy with real processes.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from fedretrain import cli, compare
from fedretrain.config import check_override_keys, compose
from fedretrain.preflight import to_typed
from fedretrain.registry import Registry, Status

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SIMULATE = ("fedretrain-simulate", ".venv/bin/fedretrain-simulate", "python -m fedretrain")
# A user's own names in the examples, replaced by ones that exist here.
PLACEHOLDERS = {"mypkg.models.make_net": "fedretrain.models.MLP"}
RUN_DIRS = ("RUN_DIR", "fed/run")
READ_ONLY = ("list", "show", "events", "check", "diff")


def commands() -> list[tuple[str, str]]:
    """(file, command) for each command line of the docs' bash blocks: continuations joined,
    comments dropped, ``a && b`` split."""
    found = []
    for doc in DOCS:
        blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line and not line.startswith("#"):
                    found += [(doc.name, part.strip()) for part in line.split("&&")]
    return found


def _args(command: str, prefix: str) -> list[str]:
    rest = command[len(prefix) :].replace("$PWD", "/tmp")
    for name, real in PLACEHOLDERS.items():
        rest = rest.replace(name, real)
    return shlex.split(rest)


def _without_env(command: str) -> str:
    """``NAME=value cmd ...`` is ``cmd ...`` with an environment."""
    return re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", command)


ALL = [(doc, _without_env(c)) for doc, c in commands()]
SIMULATIONS = [(d, c) for d, c in ALL if c.startswith(SIMULATE) and "..." not in c]
COMPARES = [(d, c) for d, c in ALL if c.startswith(("fedretrain-compare", "fedretrain compare"))]
CLI = [
    (d, c) for d, c in ALL if c.startswith("fedretrain ") and not c.startswith("fedretrain compare")
]


def test_the_docs_have_the_commands_this_test_checks() -> None:
    assert len(SIMULATIONS) >= 15 and len(COMPARES) >= 3 and len(CLI) >= 10


@pytest.mark.parametrize(("doc", "command"), SIMULATIONS, ids=[c for _, c in SIMULATIONS])
def test_a_documented_simulation_is_a_valid_config(doc: str, command: str) -> None:
    prefix = next(p for p in SIMULATE if command.startswith(p))
    every = _args(command, prefix)
    args = [a for a in every if a not in ("-m", "--cfg", "job")]
    assert check_override_keys(args) == [], f"{doc}: {command}"
    sweep = "-m" in every
    first = [_first_value(a) if sweep else a for a in args]  # a sweep's first job
    to_typed(compose(first), build_targets=False)  # raises ConfigError with the problems


def _first_value(override: str) -> str:
    """``key=a,b`` (a sweep) as ``key=a``; a list value ``key=[a,b]`` stays whole."""
    key, _, value = override.partition("=")
    depth = 0
    for i, char in enumerate(value):
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            return f"{key}={value[:i]}"
    return override


@pytest.mark.parametrize(("doc", "command"), COMPARES, ids=[c for _, c in COMPARES])
def test_a_documented_compare_parses_and_its_config_is_valid(doc: str, command: str) -> None:
    prefix = (
        "fedretrain-compare" if command.startswith("fedretrain-compare") else "fedretrain compare"
    )
    plan = compare.parse(_args(command, prefix))
    assert plan.policies and plan.overrides, f"{doc}: {command}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with a champion and a candidate, a gate event, and the clusters of an
    adaptation=clustered run (v1 serves cluster 0, v2 cluster 1)."""
    run = tmp_path_factory.mktemp("docs") / "run"
    with Registry(run, create=True) as registry:
        w = {"fc.weight": np.zeros((2, 3), np.float32)}
        registry.register(
            w, key="p0", trigger="initial", reason="initial", period=0, status=Status.champion,
            cluster=0,
        )  # fmt: skip
        registry.register({k: v + 1 for k, v in w.items()}, key="p1", trigger="warm",
                          reason="drift", period=1, parent=1, cluster=1)  # fmt: skip
        registry.record("gate", period=1, version=2, payload={"passed": True}, key="p1-gate")
        for cluster in (0, 1):
            registry.set_cluster_champion(cluster, cluster + 1, reason="serves", period=1)
        served = {"assignment": {"0": 0, "1": 1}, "versions": {"0": 1, "1": 2}}
        registry.record("clusters", period=1, payload=served)
    return run


@pytest.mark.parametrize(("doc", "command"), CLI, ids=[c for _, c in CLI])
def test_a_documented_fedretrain_command_parses_and_read_only_ones_run(
    doc: str, command: str, run_dir: Path
) -> None:
    args = _args(command, "fedretrain ")
    args = [str(run_dir) if a in RUN_DIRS else a for a in args]
    parsed = cli._parser().parse_args(args)  # a renamed command or option fails here
    assert parsed.handler is not None
    if args[0] == "models" and args[1] in READ_ONLY:
        if args[1] == "diff" and len(args) < 5:
            return
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli.main(args) == 0, f"{doc}: {command}"
        assert out.getvalue()
