"""``fedretrain compare`` is ``fedretrain-compare``: same help, same errors, arguments unchanged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from fedretrain import cli, compare


def exit_of(
    command: Callable[[Sequence[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[object, str, str]:
    """The exit code, stdout and stderr of a command that must exit through argparse."""
    with pytest.raises(SystemExit) as exited:
        command(argv)
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_help_is_compares_own(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = exit_of(cli.main, ["compare", "--help"], capsys)
    assert code == 0 and err == ""
    assert "--policies" in out and "--out" in out and "Hydra overrides" in out
    assert out.startswith("usage: fedretrain compare ")  # not the parent command's name
    assert (code, out.replace("fedretrain compare", "fedretrain-compare"), err) == exit_of(
        compare.main, ["--help"], capsys
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--policies", "bogus", "scenario=sine_flip"],  # an unknown policy
        ["--policies", "periodic"],  # no scenario
        [],
    ],
)
def test_bad_arguments_exit_as_fedretrain_compare_does(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = exit_of(cli.main, ["compare", *argv], capsys)
    assert code == 2 and out == "" and "fedretrain compare: error: " in err
    expected = exit_of(compare.main, argv, capsys)
    assert (code, out, err.replace("fedretrain compare", "fedretrain-compare")) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["scenario=sine_flip", "--policies", "periodic,triggered", "--out", "runs/sea"],
        ["--policies", "periodic", "scenario=sea_thresholds", "runtime.seed=3"],
        ["-h", "--", "scenario=x"],
    ],
)
def test_arguments_reach_compare_unchanged(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(compare, "main", lambda args, prog: seen.append([prog, *args]))
    assert cli.main(["compare", *argv]) == 0
    assert seen == [["fedretrain compare", *argv]]


def test_compare_is_listed_in_the_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exit_of(cli.main, ["--help"], capsys)
    assert code == 0 and "compare" in out
