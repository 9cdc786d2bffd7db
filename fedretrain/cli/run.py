"""``fedretrain report | privacy | resume | compare``: what a run folder holds, and more runs.

Each command imports what it needs (pandas and matplotlib, or Flower, Ray and torch) when it
runs, so that ``fedretrain --help`` and the registry commands start quickly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedretrain.cli.errors import CliError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report``, ``privacy``, ``resume`` and ``compare`` to the ``fedretrain`` commands."""
    report = commands.add_parser(
        "report",
        help="rebuild a run's plots, summary and report.html from its files",
        description="Rebuild metrics.png, timeline.png (drift scenarios), summary.json and "
        "report.html from metrics.csv, timeline.csv and the registry, e.g. for a run that "
        "was stopped.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.set_defaults(handler=_report)

    privacy = commands.add_parser(
        "privacy",
        help="each site's cumulative ε over the run's rounds (DP-SGD runs)",
        description="Each site's cumulative ε after every training round, from privacy.csv; "
        "the sites' ledgers (privacy/site-<id>.json) hold the full history.",
    )
    privacy.add_argument("run_dir", metavar="RUN_DIR")
    privacy.add_argument("--json", action="store_true", help="print JSON")
    privacy.set_defaults(handler=_privacy)

    resume = commands.add_parser(
        "resume",
        help="continue a killed run from its last checkpoint",
        description="Continue the run in RUN_DIR from the checkpoint it wrote after its "
        "last completed round or period, with the config it was started with.",
    )
    resume.add_argument("run_dir", metavar="RUN_DIR")
    resume.set_defaults(handler=_resume)

    # Every argument, --help and --policies included, belongs to fedretrain-compare's own
    # parser: with no prefix character of its own (and no -h) this one takes them all as
    # positionals and hands them on unchanged, in their order.
    compare = commands.add_parser(
        "compare",
        help="run a drift scenario under several policies and compare them",
        add_help=False,
        prefix_chars="\0",
    )
    compare.add_argument("args", nargs=argparse.REMAINDER)
    compare.set_defaults(handler=_compare)


def _report(args: argparse.Namespace) -> int:
    """Rebuild the plots and ``summary.json`` of a run folder from its CSV files.

    Keys of an existing ``summary.json`` that the CSV files cannot give (wall time, the run's
    settings) are kept; the others are recomputed.
    """
    import pandas as pd  # only this command needs pandas and matplotlib

    from fedretrain.atomic import atomic_replace
    from fedretrain.report import plot_metrics, print_summary, read_rounds, summarize_rounds
    from fedretrain.timeline import plot_timeline, read_timeline, summarize_timeline

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CliError(f"{run_dir} is not a folder")
    metrics_csv, timeline_csv = run_dir / "metrics.csv", run_dir / "timeline.csv"
    if not metrics_csv.is_file() and not timeline_csv.is_file():
        raise CliError(f"{run_dir} has neither metrics.csv nor timeline.csv: not a run folder")
    try:
        rounds = read_rounds(metrics_csv) if metrics_csv.is_file() else None
        periods = read_timeline(timeline_csv) if timeline_csv.is_file() else None
        change_points: list[int] = []
        if periods is not None:  # a drift scenario: the timeline is the run's summary
            change_points = [int(p) for p in periods.loc[periods["change_point"], "period"]]
            num_periods = int(periods["period"].max()) + 1  # the periods run so far
            summary = summarize_timeline(periods, change_points, num_periods)
        else:
            summary = summarize_rounds(rounds)  # type: ignore[arg-type]
    except (ValueError, KeyError, pd.errors.ParserError) as err:
        raise CliError(f"cannot rebuild the report of {run_dir}: {err}") from None
    summary.update({k: v for k, v in _old_summary(run_dir).items() if k not in summary})
    written = []
    if rounds is not None and not rounds.empty:
        plot_metrics(rounds, run_dir / "metrics.png")
        written.append("metrics.png")
    if periods is not None:
        plot_timeline(periods, change_points, run_dir / "timeline.png")
        written.append("timeline.png")
    privacy_csv = run_dir / "privacy.csv"
    if privacy_csv.is_file():
        from fedretrain.privacy.tracking import plot_epsilon

        epsilon = pd.read_csv(privacy_csv)
        if not epsilon.empty:
            plot_epsilon(epsilon, run_dir / "privacy.png")
            written.append("privacy.png")
    text = json.dumps(summary, indent=2, default=str)
    atomic_replace(run_dir / "summary.json", lambda tmp: tmp.write_text(text))
    written.append("summary.json")
    from fedretrain.html_report import write_report

    write_report(run_dir, finished=True)
    written.append("report.html")
    print_summary(summary, sys.stdout)
    print(f"wrote {', '.join(written)} in {run_dir}")
    return 0


def _old_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"fedretrain: {path} is unreadable ({err}); rebuilding it", file=sys.stderr)
        return {}
    return old if isinstance(old, dict) else {}


def _privacy(args: argparse.Namespace) -> int:
    """Each site's cumulative ε after every training round, from the run's privacy.csv."""
    import pandas as pd

    path = Path(args.run_dir) / "privacy.csv"
    if not path.is_file():
        raise CliError(f"{path} does not exist: the run did not train with privacy=dpsgd")
    table = pd.read_csv(path)
    if table.empty:
        raise CliError(f"{path} is empty: no site has trained yet")
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    wide = table.pivot_table(index="server_round", columns="site", values="epsilon", aggfunc="last")
    wide = wide.ffill()
    print("cumulative ε per site (rows: server round) at δ from the run's privacy.delta")
    print(wide.to_string(float_format=lambda x: f"{x:.3f}", na_rep="-"))
    statistics = _old_summary(Path(args.run_dir)).get("statistics_privacy")
    if statistics:  # a drift run: say whether the monitoring statistics are in these ε
        print(f"monitoring statistics: {statistics}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from fedretrain.simulate import resume  # Flower, Ray and torch: only for this command

    return resume(Path(args.run_dir))


def _compare(args: argparse.Namespace) -> int:
    """``fedretrain-compare`` itself: its errors exit as its parser makes them (status 2)."""
    from fedretrain import compare

    compare.main(args.args, prog="fedretrain compare")
    return 0
