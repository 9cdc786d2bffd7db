"""``report.html``: one self-contained page of a run folder, for a person to keep open.

It shows what the folder holds, as it is now: the summary, the timeline with its alarms and
decisions and their reasons, the registry's versions (with each site's gate score) and events,
each site's ε, and the rejected replies; the plots are embedded, so the file opens offline,
copied anywhere. While the run goes on the page reloads itself every 30 s; the controller
rewrites it atomically after every period (every round in a static run), and ``fedretrain
report RUN_DIR`` rebuilds it.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedretrain.atomic import atomic_replace
from fedretrain.registry import Registry, RegistryError
from fedretrain.report import NOT_PRINTED, shown

FILE = "report.html"
PLOTS = ("timeline.png", "metrics.png", "privacy.png")
REFRESH_S = 30
LAST_ROWS = 50  # of the long tables (rounds, rejections, events): the latest ones

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}tr.alarm td{background:#fde2e2}
tr.retrain td{font-weight:600}.muted{color:#777}img{max-width:100%;border:1px solid #eee}
"""
# Counts what the browser really shows; the tests read these back from the rendered page.
SCRIPT = """
window.addEventListener('load', function () {
  var shown = Array.prototype.filter.call(document.images, function (i) {
    return i.complete && i.naturalWidth > 0; });
  document.body.dataset.imagesShown = String(shown.length);
  document.body.dataset.periodRows = String(
    document.querySelectorAll('#timeline tbody tr').length);
});
"""


def write_report(run_dir: Path, finished: bool = False) -> Path:
    """Write ``run_dir/report.html`` (atomically) from the folder's files; return its path."""
    page = render(run_dir, finished)
    path = run_dir / FILE
    atomic_replace(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def render(run_dir: Path, finished: bool) -> str:
    """The page's HTML."""
    summary = _json(run_dir / "summary.json") if finished else {}
    timeline = _csv(run_dir / "timeline.csv")
    rounds = _csv(run_dir / "metrics.csv")
    parts = [
        f"<h1>fedretrain run {_e(run_dir.name)}</h1>",
        f"<p class=muted>{_e(run_dir.resolve())} · {_status(finished, timeline, rounds)}</p>",
    ]
    if summary:
        rows = [(k, _e(shown(v))) for k, v in summary.items() if k not in NOT_PRINTED]
        parts += ["<h2>Summary</h2>", _table(("", "value"), rows, id_="summary")]
    parts += [
        f'<h2>{_e(name)}</h2><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
        for name, data in _plots(run_dir)
    ]
    if timeline:
        parts += ["<h2>Timeline</h2>", _timeline(timeline, _decisions(run_dir))]
    elif rounds:
        keys = ("round", "train_loss", "eval_loss", "accuracy", "f1", "train_clients")
        body = [tuple(_cell(r.get(k)) for k in keys) for r in rounds[-LAST_ROWS:]]
        parts += ["<h2>Rounds</h2>", _table(keys, body, id_="rounds")]
    parts += _registry(run_dir)
    parts += _privacy(run_dir)
    rejections = _csv(run_dir / "rejections.csv")
    if rejections:
        columns = list(rejections[0])
        last = [tuple(_cell(r.get(k)) for k in columns) for r in rejections[-LAST_ROWS:]]
        title = f"Rejected replies ({len(rejections)}; the last {len(last)})"
        parts += [f"<h2>{title}</h2>", _table(columns, last, id_="rejections")]
    refresh = "" if finished else f'<meta http-equiv="refresh" content="{REFRESH_S}">'
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"{refresh}<title>fedretrain · {_e(run_dir.name)}</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def _status(finished: bool, timeline: list[dict[str, str]], rounds: list[dict[str, str]]) -> str:
    if finished:
        return "finished"
    where = f"period {timeline[-1]['period']}" if timeline else f"{len(rounds)} rounds"
    return f"running: {where} done; this page reloads every {REFRESH_S} s"


def _timeline(rows: list[dict[str, str]], decisions: dict[str, dict[str, Any]]) -> str:
    keys = ("period", "accuracy", "alarms", "alarm_sites", "action", "rounds",
            "serving_version", "validation_accuracy", "reason")  # fmt: skip
    lines = []
    for row in rows:
        classes = [c for c, on in (("alarm", row.get("alarms")), ("retrain", row.get("retrain")
                   == "True")) if on]  # fmt: skip
        cells = [_cell(row.get(k)) for k in keys[:-1]]
        decision = decisions.get(row.get("period", ""), {})
        causes = "; ".join(str(c) for c in decision.get("causes", []))
        reason = row.get("reason", "") + (f" ({causes})" if causes else "")
        cells.append(_e(reason))
        cls = f' class="{" ".join(classes)}"' if classes else ""
        lines.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    return (
        f"<table id=timeline><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
    )


def _registry(run_dir: Path) -> list[str]:
    try:
        with Registry(run_dir) as registry:
            versions = [v.to_dict() for v in registry.versions()]
            events = [e.to_dict() for e in registry.events()]
            aliases = registry.aliases()
    except (RegistryError, sqlite3.Error):
        return []
    by_version: dict[int, list[str]] = {}
    for name, version in aliases.items():
        by_version.setdefault(version, []).append(name)
    keys = ("version", "status", "aliases", "trigger", "parent", "period", "rounds", "metrics",
            "site scores", "reason")  # fmt: skip
    body = [
        (
            f"v{v['version']}",
            _e(v["status"]),
            _e(", ".join(by_version.get(v["version"], []))),
            _e(v["trigger"]),
            "" if v["parent"] is None else f"v{v['parent']}",
            str(v["period"]),
            str(v["rounds"]),
            _cell(v["metrics"]),
            _cell(
                {
                    s: m.get("accuracy")
                    for s, m in sorted(
                        v["site_metrics"].items(),
                        key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0,
                    )
                }
            ),  # fmt: skip
            _e(v["reason"]),
        )
        for v in versions
    ]
    event_rows = [
        (
            str(e["id"]),
            _e(e["kind"]),
            _cell(e["period"]),
            "" if e["version"] is None else f"v{e['version']}",
            _cell(e["payload"]),
        )  # fmt: skip
        for e in events[-LAST_ROWS:]
    ]
    return [
        "<h2>Registry</h2>",
        _table(keys, body, id_="versions"),
        f"<h2>Events ({len(events)}; the last {len(event_rows)})</h2>",
        _table(("id", "kind", "period", "version", "payload"), event_rows, id_="events"),
    ]


def _privacy(run_dir: Path) -> list[str]:
    rows = _csv(run_dir / "privacy.csv")
    if not rows:
        return []
    latest: dict[str, str] = {}
    for row in rows:
        latest[row["site"]] = row["epsilon"]
    body = [(s, _cell(float(e))) for s, e in sorted(latest.items(), key=lambda kv: int(kv[0]))]
    return ["<h2>ε per site (cumulative)</h2>", _table(("site", "ε"), body, id_="privacy")]


def _plots(run_dir: Path) -> Iterable[tuple[str, str]]:
    for name in PLOTS:
        path = run_dir / name
        if path.is_file():
            yield name, base64.b64encode(path.read_bytes()).decode("ascii")


def _decisions(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    try:
        lines = (run_dir / "decisions.jsonl").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            decision = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "retrain" in decision:  # the trigger's decision, not a tournament's or a cluster's
            out[str(decision.get("period"))] = decision
    return out


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], id_: str) -> str:
    """Cells are HTML already (escaped by :func:`_cell` or :func:`_e`)."""
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table id={id_}><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    """A value as escaped text: floats to 4 places, maps and lists compact.

    >>> _cell(0.123456), _cell("<b>"), _cell({"a": 1.0}), _cell(None)
    ('0.1235', '&lt;b&gt;', 'a: 1.0000', '')
    """
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return _e(value)
        return _cell(number) if "." in value or "e" in value else _e(value)
    if isinstance(value, dict):
        return _e(", ".join(f"{k}: {_plain(v)}" for k, v in value.items()))
    return _e(str(value))


def _plain(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _e(value: object) -> str:
    return html.escape(str(value))


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []
