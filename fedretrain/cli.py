"""``fedretrain``: the operator's command line for a run folder's registry and report.

Examples
--------
    fedretrain models list outputs/2025-01-31/12-00-00
    fedretrain models show RUN_DIR champion
    fedretrain models diff RUN_DIR v1 v3
    fedretrain models promote RUN_DIR 3 --reason "validated offline"
    fedretrain models rollback RUN_DIR [--to 1]
    fedretrain models export RUN_DIR champion model.safetensors
    fedretrain models check RUN_DIR
    fedretrain models events RUN_DIR [--kind promote]
    fedretrain report RUN_DIR
    fedretrain privacy RUN_DIR
    fedretrain resume RUN_DIR
    fedretrain certs init CREDS --host superlink.example.org
    fedretrain certs site CREDS site-0 site-1 site-2
    fedretrain server --run-dir RUN_DIR --creds CREDS scenario=deployed [OVERRIDES...]
    fedretrain agent --superlink HOST:9092 --data DIR --site-id 0 --ca ca.crt --key site-0.key

A version is named by its number (``3`` or ``v3``) or an alias (``champion``, ``candidate``).
Errors print one line and exit with status 2, having changed nothing; ``models check`` exits
with 1 when it finds a problem. Simulations run with ``fedretrain-simulate`` (or
``python -m fedretrain``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from fedretrain import __version__
from fedretrain.registry import (
    REGISTRY_FILE,
    ModelFileError,
    ModelVersion,
    Registry,
    RegistryError,
    model_file,
)
from fedretrain.registry import diff as model_diff
from fedretrain.registry.registry import ALIASES


class CliError(Exception):
    """A command that cannot run as asked; the message is printed as it is."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``fedretrain`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (CliError, RegistryError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"fedretrain: error: {message}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------- models


def _list(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        versions = registry.versions()
        aliases = _aliases_by_version(registry)
    if args.json:
        print(json.dumps([_with_aliases(v, aliases) for v in versions], indent=2))
        return 0
    if not versions:
        print(f"{args.run_dir}: no versions registered")
        return 0
    headers = ["version", "status", "alias", "parent", "period", "trigger", "rounds", "sites"]
    rows = [
        [
            f"v{v.version}",
            v.status.value,
            ",".join(aliases.get(v.version, [])),
            _v(v.parent),
            v.period,
            v.trigger,
            v.rounds,
            len(v.sites),
            _metrics(v.metrics),
        ]
        for v in versions
    ]
    print(_table([*headers, "metrics"], rows))
    return 0


def _show(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        v = registry.get(_resolve(registry, args.version))
        aliases = _aliases_by_version(registry).get(v.version, [])
        events = registry.events(version=v.version)
        try:
            registry.model_bytes(v.version)
            file_state = "ok (sha256 verified)"
        except ModelFileError as err:
            file_state = f"BROKEN: {err}"
    if args.json:
        record = {**_with_aliases(v, {v.version: aliases}), "file_ok": file_state.startswith("ok")}
        record["events"] = [e.to_dict() for e in events]
        print(json.dumps(record, indent=2))
        return 0
    samples = ", ".join(f"{site}={n}" for site, n in v.samples.items())
    fields = [
        ("version", f"v{v.version}"),
        ("status", v.status.value),
        ("aliases", ", ".join(aliases) or "-"),
        ("key", v.key),
        ("parent", _v(v.parent)),
        ("trigger", v.trigger),
        ("reason", v.reason),
        ("period", v.period),
        ("rounds", v.rounds),
        ("sites", f"{len(v.sites)} ({samples})" if samples else "0"),
        ("samples", sum(v.samples.values())),
        ("metrics", _metrics(v.metrics) or "-"),
        ("epsilon", _metrics(v.epsilon) or "- (no differential privacy)"),
        ("config_hash", v.config_hash or "-"),
        ("created", v.created),
        ("file", v.file),
        ("sha256", v.sha256),
        ("file_check", file_state),
    ]
    print(_table(["field", "value"], fields, header=False))
    if v.site_metrics:
        names = sorted({name for m in v.site_metrics.values() for name in m})
        rows = [[site, *(m.get(n) for n in names)] for site, m in v.site_metrics.items()]
        print("\nper-site metrics")
        print(_table(["site", *names], rows))
    if events:
        print("\nevents")
        print(_events_table(events))
    return 0


def _diff(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        first = registry.get(_resolve(registry, args.first))
        second = registry.get(_resolve(registry, args.second))
        arrays_first = registry.load(first.version)
        arrays_second = registry.load(second.version)
    a, b = f"v{first.version}", f"v{second.version}"
    print(f"{a} -> {b}")
    changes = model_diff.lineage_changes(first, second)
    print("\nlineage")
    print(_table(["field", a, b], changes) if changes else "  identical")
    metrics = model_diff.metric_changes(first, second)
    if metrics:
        rows = [[m.site or "global", m.name, m.first, m.second, m.delta] for m in metrics]
        print("\nmetrics")
        print(_table(["site", "metric", a, b, "delta"], rows))
    distances = model_diff.tensor_distances(arrays_first, arrays_second)
    rows = [[d.name, d.l2, d.norm_first, d.norm_second, d.note] for d in distances]
    rows.append(["(all)", model_diff.total_distance(distances), None, None, ""])
    print("\nweights: L2 distance per tensor")
    print(_table(["tensor", "L2", f"|{a}|", f"|{b}|", "note"], rows))
    return 0


def _promote(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        version = _resolve(registry, args.version)
        champion = registry.champion()
        if champion is not None and champion.version == version:
            raise CliError(f"v{version} is already the champion")
        registry.promote(version, reason=args.reason, manual=True)
    was = f" (was {_v(champion.version)})" if champion is not None else ""
    print(f"v{version} is now the champion{was}: {args.reason}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        to = None if args.to is None else _resolve(registry, args.to)
        champion = registry.champion()
        chosen = registry.rollback(to=to, reason=args.reason, manual=True)
    was = _v(champion.version) if champion is not None else "-"
    print(f"champion rolled back from {was} to v{chosen.version}: {args.reason}")
    return 0


def _export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} exists; not overwriting it")
    with Registry(args.run_dir) as registry:
        version = _resolve(registry, args.version)
        data = registry.model_bytes(version)
    model_file.write(out, data)
    print(f"wrote v{version} to {out} (sha256 {model_file.sha256(data)})")
    return 0


def _check(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        problems = registry.check_invariants()
        count = len(registry.versions())
        champion = registry.champion()
    if problems:
        for problem in problems:
            print(f"problem: {problem}")
        return 1
    serving = f", champion v{champion.version}" if champion is not None else ""
    print(f"ok: {count} versions{serving}, every model file verified")
    return 0


def _events(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        version = None if args.version is None else _resolve(registry, args.version)
        events = registry.events(kind=args.kind, version=version)
    if args.json:
        print(json.dumps([e.to_dict() for e in events], indent=2))
    elif events:
        print(_events_table(events))
    else:
        print("no events")
    return 0


# ---------------------------------------------------------------------- report


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


# ---------------------------------------------------------------------- helpers


def _resolve(registry: Registry, text: str) -> int:
    """A version number from ``3``, ``v3``, ``champion`` or ``candidate``."""
    if text in ALIASES:
        version = registry.aliases().get(text)
        if version is None:
            raise CliError(f"no version is the {text} in {registry.path}")
        return version
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit():
        raise CliError(f"{text!r} is not a version: give a number (3 or v3) or {ALIASES}")
    return registry.get(int(digits)).version


def _aliases_by_version(registry: Registry) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, version in registry.aliases().items():
        out.setdefault(version, []).append(name)
    return out


def _with_aliases(v: ModelVersion, aliases: dict[int, list[str]]) -> dict[str, Any]:
    return {**_jsonable(v.to_dict()), "aliases": aliases.get(v.version, [])}


def _jsonable(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _v(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def _metrics(values: dict[str, float]) -> str:
    return _cell(values) if values else ""


def _events_table(events: Sequence[Any]) -> str:
    rows = [
        [e.id, e.created, e.kind, e.period, _v(e.version), json.dumps(e.payload)] for e in events
    ]
    return _table(["id", "created", "kind", "period", "version", "payload"], rows)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], header: bool = True) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [[_cell(c) for c in row] for row in rows]
    if header:
        cells.insert(0, list(headers))
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedretrain",
        description="Inspect and steer a fedretrain run folder: its model registry and report.",
    )
    parser.add_argument("--version", action="version", version=f"fedretrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="the model registry of a run folder")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = actions.add_parser(name, help=help, description=help)
        sub.add_argument("run_dir", metavar="RUN_DIR", help=f"a run folder with {REGISTRY_FILE}")
        sub.set_defaults(handler=handler)
        return sub

    sub = action("list", _list, "every version, its status and aliases")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub = action("show", _show, "one version's lineage, metrics, file check and events")
    sub.add_argument("version", metavar="VERSION", help="3, v3, champion or candidate")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub = action("diff", _diff, "lineage, metric and per-tensor L2 differences of two versions")
    sub.add_argument("first", metavar="V1")
    sub.add_argument("second", metavar="V2")
    sub = action("promote", _promote, "make a version the champion (recorded as manual)")
    sub.add_argument("version", metavar="VERSION")
    sub.add_argument("--reason", default="manual promotion from the fedretrain CLI")
    sub = action("rollback", _rollback, "put the champion back to its parent or a version")
    sub.add_argument("--to", metavar="VERSION", help="the version to serve (default: parent)")
    sub.add_argument("--reason", default="manual rollback from the fedretrain CLI")
    sub = action("export", _export, "copy a version's verified model file")
    sub.add_argument("version", metavar="VERSION")
    sub.add_argument("out", metavar="OUT.safetensors", help="a new file (never overwritten)")
    action("check", _check, "check the registry's invariants and every model file's sha256")
    sub = action("events", _events, "the recorded decisions, oldest first")
    sub.add_argument("--kind", help="only events of this kind (promote, rollback, gate...)")
    sub.add_argument("--version", metavar="VERSION", help="only events about this version")
    sub.add_argument("--json", action="store_true", help="print JSON")

    report = commands.add_parser(
        "report",
        help="rebuild a run's plots and summary from its CSV files",
        description="Rebuild metrics.png, timeline.png (drift scenarios) and summary.json "
        "from metrics.csv and timeline.csv, e.g. for a run that was stopped.",
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
        help="continue a killed drift run from its last checkpoint",
        description="Continue the drift run in RUN_DIR from the checkpoint it wrote after its "
        "last completed round or period, with the config it was started with.",
    )
    resume.add_argument("run_dir", metavar="RUN_DIR")
    resume.set_defaults(handler=_resume)
    _deploy_commands(commands)
    return parser


def _deploy_commands(commands: Any) -> None:
    """``certs``, ``server`` and ``agent``: a deployment on Flower's deployment engine."""
    certs = commands.add_parser("certs", help="credentials of a deployment (CA, server, sites)")
    steps = certs.add_subparsers(dest="step", required=True, metavar="STEP")
    init = steps.add_parser(
        "init",
        help="make the CA and the SuperLink's TLS certificate",
        description="Make ca.crt/ca.key and server.pem/server.key in CREDS. The certificate "
        "names localhost and 127.0.0.1 plus every --host: give each name or address the sites "
        "dial.",
    )
    init.add_argument("creds", metavar="CREDS")
    init.add_argument("--host", action="append", default=[], help="a name or IP sites dial")
    init.set_defaults(handler=_certs_init)
    site = steps.add_parser(
        "site",
        help="make sites' authentication key pairs",
        description="Make NAME.key (private, give to the site) and NAME.pub (registered by "
        "the server) in CREDS for each NAME.",
    )
    site.add_argument("creds", metavar="CREDS")
    site.add_argument("names", metavar="NAME", nargs="+")
    site.set_defaults(handler=_certs_site)
    register = steps.add_parser(
        "register",
        help="register site public keys with a running SuperLink",
        description="Register KEY.pub files (default: every *.pub in CREDS) with the SuperLink "
        "at --superlink. fedretrain server registers every *.pub in CREDS when it starts; use "
        "this for a site added while it runs.",
    )
    register.add_argument("creds", metavar="CREDS")
    register.add_argument("keys", metavar="KEY.pub", nargs="*")
    register.add_argument("--superlink", required=True, metavar="HOST:PORT")
    register.set_defaults(handler=_certs_register)

    server = commands.add_parser(
        "server",
        help="run the retraining server: SuperLink with TLS and node auth, and the app",
        description="Start Flower's SuperLink (TLS, SuperNode authentication, its state in "
        "RUN_DIR/deploy), register every site key in CREDS, and run the retraining app with "
        "the Hydra OVERRIDES (scenario=deployed and its schema). Started again on the same "
        "RUN_DIR it resumes the run.",
    )
    server.add_argument("--run-dir", required=True, metavar="RUN_DIR")
    server.add_argument("--creds", required=True, metavar="CREDS")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=9092)
    server.add_argument("overrides", metavar="OVERRIDE", nargs="*", help="Hydra overrides")
    server.set_defaults(handler=_server)

    agent = commands.add_parser(
        "agent",
        help="run a site: a SuperNode serving the site's data folder",
        description="Run Flower's SuperNode with fedretrain's ClientApp on the files in DATA "
        "(CSV or Parquet, checked against the federation's schema).",
    )
    agent.add_argument("--superlink", required=True, metavar="HOST:PORT")
    agent.add_argument("--data", required=True, metavar="DATA")
    agent.add_argument("--site-id", required=True, type=int)
    agent.add_argument("--ca", required=True, help="the federation's ca.crt")
    agent.add_argument("--key", required=True, help="this site's private key (NAME.key)")
    agent.add_argument("--state-dir", help="default: DATA/.fedretrain-agent")
    agent.add_argument(
        "--runtime-port", type=int, default=9094, help="the SuperNode's local API port"
    )
    agent.set_defaults(handler=_agent)


def _certs_init(args: argparse.Namespace) -> int:
    from fedretrain.deploy.certs import make_ca, make_server_certificate

    creds = Path(args.creds)
    try:
        ca = make_ca(creds)
        server = make_server_certificate(creds, ca, args.host)
    except FileExistsError as err:
        raise CliError(f"{err}: CREDS already holds a CA; remove it to start over") from None
    print(f"CA: {ca.cert} (give to every site), {ca.key} (keep private)")
    print(f"SuperLink: {server.cert}, {server.key}")
    return 0


def _certs_site(args: argparse.Namespace) -> int:
    from fedretrain.deploy.certs import make_site_keys

    try:
        keys = make_site_keys(Path(args.creds), args.names)
    except FileExistsError as err:
        raise CliError(f"{err}: a site keeps its key; pick a new name") from None
    for pair in keys.values():
        print(f"{pair.site}: {pair.private_key} (give to the site), {pair.public_key}")
    return 0


def _certs_register(args: argparse.Namespace) -> int:
    import tempfile

    from fedretrain.deploy.certs import (
        RegistrationError,
        SiteKeys,
        register_sites,
        write_superlink_connection,
    )
    from fedretrain.deploy.launch import flower_bin
    from fedretrain.deploy.server import site_public_keys

    creds = Path(args.creds)
    keys = [SiteKeys(Path(k).stem, Path(k).with_suffix(".key"), Path(k)) for k in args.keys]
    keys = keys or site_public_keys(creds)
    if not keys:
        raise CliError(f"no *.pub in {creds}: make site keys with `fedretrain certs site`")
    with tempfile.TemporaryDirectory() as home:
        write_superlink_connection(Path(home), "fedretrain", args.superlink, creds / "ca.crt")
        try:
            done = register_sites(keys, "fedretrain", flwr_home=Path(home), flwr=flower_bin("flwr"))
        except RegistrationError as err:
            raise CliError(str(err)) from None
    for r in done:
        print(
            f"{r.site}: " + ("already registered" if r.already_registered else f"node {r.node_id}")
        )
    return 0


def _server(args: argparse.Namespace) -> int:
    from fedretrain.deploy.server import DeployError, ServerOptions, serve

    options = ServerOptions(
        run_dir=Path(args.run_dir),
        creds=Path(args.creds),
        overrides=tuple(args.overrides),
        host=args.host,
        port=args.port,
    )
    try:
        return serve(options)
    except DeployError as err:
        raise CliError(str(err)) from None
    except KeyboardInterrupt:
        print("fedretrain server: stopped; start it again on the same --run-dir to resume")
        return 130


def _agent(args: argparse.Namespace) -> int:
    import signal

    from fedretrain.deploy.agent import AgentOptions, run_agent

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return run_agent(
        AgentOptions(
            superlink=args.superlink,
            data=Path(args.data),
            site_id=args.site_id,
            ca=Path(args.ca),
            key=Path(args.key),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            runtime_port=args.runtime_port,
        )
    )


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
    return 0


def _resume(args: argparse.Namespace) -> int:
    from fedretrain.simulate import resume  # Flower, Ray and torch: only for this command

    return resume(Path(args.run_dir))


if __name__ == "__main__":
    sys.exit(main())
