"""The repository keeps its promises to a newcomer: CI runs what the README says."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    test_command = next(b for b in blocks if b.endswith("pytest"))
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_main_command_runs_the_default_simulation() -> None:
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert blocks[0].endswith(".venv/bin/fedretrain-simulate")
    assert "-c constraints.txt" in blocks[0]
