"""``fedretrain models ...``: list, inspect, compare and steer the versions in a run's registry.

A version is named by its number (``3`` or ``v3``) or an alias (``champion``, ``candidate``,
or ``cluster-N``, cluster N's champion in an ``adaptation=clustered`` run).
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedretrain.cli.errors import CliError
from fedretrain.cli.tables import events_table, metrics_cell, table, version_label
from fedretrain.registry import (
    REGISTRY_FILE,
    ModelFileError,
    ModelVersion,
    NotARunFolderError,
    Registry,
    RegistryError,
    alias_cluster,
    model_file,
)
from fedretrain.registry import diff as model_diff
from fedretrain.registry.registry import ALIASES


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models`` and its actions to the ``fedretrain`` parser's commands."""
    models = commands.add_parser("models", help="the model registry of a run folder")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = actions.add_parser(name, help=help, description=help)
        sub.add_argument("run_dir", metavar="RUN_DIR", help=f"a run folder with {REGISTRY_FILE}")
        sub.set_defaults(handler=handler)
        return sub

    sub = action("list", _list, "every version, its status and aliases")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument(
        "--cluster",
        nargs="?",
        const=ALL_CLUSTERS,
        type=_cluster_number,
        metavar="N",
        help="adaptation=clustered: each version's cluster, the clusters it served and the "
        "sites it serves; with N, cluster N's lineage alone",
    )
    sub = action("show", _show, "one version's lineage, metrics, file check and events")
    sub.add_argument("version", metavar="VERSION", help="3, v3, champion, candidate, cluster-N")
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


ALL_CLUSTERS = -1  # ``--cluster`` without a number


def _cluster_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a cluster number (0, 1, 2...)")
    return int(text)


def _list(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        versions = registry.versions()
        aliases = _aliases_by_version(registry)
        clusters = _clusters_by_version(registry) if args.cluster is not None else None
    if args.cluster is not None and not clusters:
        print(
            f"{args.run_dir}: no clusters recorded (only an adaptation=clustered run has them)",
            file=sys.stderr,
        )
        return 1
    if args.cluster not in (None, ALL_CLUSTERS):
        known = sorted({v.cluster for v in versions if v.cluster is not None})
        versions = [v for v in versions if v.cluster == args.cluster]
        if not versions:
            print(
                f"{args.run_dir}: no version was trained for cluster {args.cluster} (its "
                f"clusters: {', '.join(map(str, known)) or 'none recorded per version'})",
                file=sys.stderr,
            )
            return 1
    if args.json:
        rows_json = [_with_aliases(v, aliases) for v in versions]
        for row in rows_json:
            if clusters:
                row |= clusters.get(row["version"], {"clusters": [], "serves": []})
        print(json.dumps(rows_json, indent=2))
        return 0
    if not versions:
        print(f"{args.run_dir}: no versions registered")
        return 0
    if clusters:
        headers = ["version", "cluster", "status", "alias", "parent", "served clusters"]
        print(
            table(
                [*headers, "serves sites", "period", "trigger", "rounds"],
                [
                    [
                        f"v{v.version}",
                        "-" if v.cluster is None else v.cluster,
                        v.status.value,
                        ",".join(aliases.get(v.version, [])),
                        version_label(v.parent),
                        ",".join(map(str, clusters.get(v.version, {}).get("clusters", []))),
                        ",".join(map(str, clusters.get(v.version, {}).get("serves", []))),
                        v.period,
                        v.trigger,
                        v.rounds,
                    ]
                    for v in versions
                ],
            )
        )
        return 0
    headers = ["version", "status", "alias", "parent", "period", "trigger", "rounds", "sites"]
    rows = [
        [
            f"v{v.version}",
            v.status.value,
            ",".join(aliases.get(v.version, [])),
            version_label(v.parent),
            v.period,
            v.trigger,
            v.rounds,
            len(v.sites),
            metrics_cell(v.metrics),
        ]
        for v in versions
    ]
    print(table([*headers, "metrics"], rows))
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
        ("cluster", "-" if v.cluster is None else v.cluster),
        ("key", v.key),
        ("parent", version_label(v.parent)),
        ("trigger", v.trigger),
        ("reason", v.reason),
        ("period", v.period),
        ("rounds", v.rounds),
        ("sites", f"{len(v.sites)} ({samples})" if samples else "0"),
        ("samples", sum(v.samples.values())),
        ("trained", "every array" if v.trained is None else ", ".join(v.trained)),
        ("metrics", metrics_cell(v.metrics) or "-"),
        ("epsilon", metrics_cell(v.epsilon) or "- (no differential privacy)"),
        ("config_hash", v.config_hash or "-"),
        ("created", v.created),
        ("file", v.file),
        ("sha256", v.sha256),
        ("file_check", file_state),
    ]
    print(table(["field", "value"], fields, header=False))
    if v.site_metrics:
        names = sorted({name for m in v.site_metrics.values() for name in m})
        by_site = sorted(v.site_metrics.items(), key=lambda item: _site_order(item[0]))
        rows = [[site, *(m.get(n) for n in names)] for site, m in by_site]
        print("\nper-site metrics")
        print(table(["site", *names], rows))
    if events:
        print("\nevents")
        print(events_table(events))
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
    print(table(["field", a, b], changes) if changes else "  identical")
    metrics = model_diff.metric_changes(first, second)
    if metrics:
        rows = [[m.site or "global", m.name, m.first, m.second, m.delta] for m in metrics]
        print("\nmetrics")
        print(table(["site", "metric", a, b, "delta"], rows))
    distances = model_diff.tensor_distances(arrays_first, arrays_second)
    rows = [[d.name, d.l2, d.norm_first, d.norm_second, d.note] for d in distances]
    rows.append(["(all)", model_diff.total_distance(distances), None, None, ""])
    print("\nweights: L2 distance per tensor")
    print(table(["tensor", "L2", f"|{a}|", f"|{b}|", "note"], rows))
    return 0


def _promote(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        version = _resolve(registry, args.version)
        champion = registry.champion()
        if champion is not None and champion.version == version:
            raise CliError(f"v{version} is already the champion")
        registry.promote(version, reason=args.reason, manual=True)
    was = f" (was {version_label(champion.version)})" if champion is not None else ""
    print(f"v{version} is now the champion{was}: {args.reason}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    with Registry(args.run_dir) as registry:
        to = None if args.to is None else _resolve(registry, args.to)
        champion = registry.champion()
        chosen = registry.rollback(to=to, reason=args.reason, manual=True)
    was = version_label(champion.version) if champion is not None else "-"
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
    """The registry's invariants and model files; for a registry that cannot be opened, what
    the folder still holds (:func:`fedretrain.cli.recovery.salvage`). Reads, never writes
    (but for the upgrade of an older registry schema, which any open makes)."""
    run_dir = Path(args.run_dir)
    try:
        with Registry(run_dir) as registry:
            problems = registry.check_invariants()
            count = len(registry.versions())
            champion = registry.champion()
    except NotARunFolderError:
        raise
    except (RegistryError, sqlite3.DatabaseError) as err:
        from fedretrain.cli.recovery import salvage

        print(f"problem: the registry cannot be opened, and was left as it is: {err}")
        print("what the folder still holds:")
        for line in salvage(run_dir):
            print(f"  {line}")
        print(
            f"way out: restore {REGISTRY_FILE} (with its -wal file) from a backup; the model "
            "files above are whole safetensors models (safetensors.numpy.load_file), the "
            "checkpoint and timeline say which one served last"
        )
        return 1
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
        print(events_table(events))
    else:
        print("no events")
    return 0


def _site_order(site: str) -> tuple[int, str]:
    """Sites in number order (10 after 9), any other name after them."""
    return (int(site), "") if site.isdigit() else (1 << 62, site)


def _resolve(registry: Registry, text: str) -> int:
    """A version number from ``3``, ``v3``, ``champion``, ``candidate`` or ``cluster-N``."""
    if text in ALIASES or alias_cluster(text) is not None:
        version = registry.aliases().get(text)
        if version is None:
            cluster = alias_cluster(text)
            what = f"cluster {cluster}'s champion" if cluster is not None else f"the {text}"
            raise CliError(f"no version is {what} in {registry.path}")
        return version
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit():
        raise CliError(
            f"{text!r} is not a version: give a number (3 or v3), champion, candidate or cluster-N"
        )
    return registry.get(int(digits)).version


def _clusters_by_version(registry: Registry) -> dict[int, dict[str, list[int]]]:
    """From the ``clusters`` events of an adaptation=clustered run: per version, the clusters
    it ever served and the sites it serves at the last recorded period."""
    recorded = registry.events(kind="clusters")
    out: dict[int, dict[str, list[int]]] = {}
    for event in recorded:
        for cluster, version in event.payload["versions"].items():
            entry = out.setdefault(int(version), {"clusters": [], "serves": []})
            if int(cluster) not in entry["clusters"]:
                entry["clusters"].append(int(cluster))
    if recorded:
        last = recorded[-1].payload
        for site, cluster in last["assignment"].items():
            version = int(last["versions"][str(cluster)])
            out.setdefault(version, {"clusters": [], "serves": []})["serves"].append(int(site))
    return out


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
