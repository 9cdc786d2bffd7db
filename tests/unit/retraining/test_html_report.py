"""``report.html`` (issue 16, item 2): written as the run goes and at its end, self-contained,
and rendered in a real browser (headless Chromium, skipped where it is missing)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MakeController, versions

from fedretrain import cli
from fedretrain.html_report import write_report

CONCEPTS = np.array([[0.0, 0.0, 0.8, 0.8, 0.8]] * 4)  # every site changes at period 2
CHROMIUM = next((c for c in ("chromium", "chromium-browser") if shutil.which(c)), None)


def test_the_page_follows_the_run_and_is_final_at_its_end(
    make_controller: MakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fedretrain.retraining.controller.PAGE_SHARE", 1.0)  # after each period
    controller, _ = make_controller(CONCEPTS)
    pages: list[str] = []
    add_row = controller._add_row

    def keep_page(row):  # noqa: ANN001, ANN202
        add_row(row)
        pages.append((tmp_path / "run" / "report.html").read_text())

    controller._add_row = keep_page  # type: ignore[method-assign]
    controller.run()
    assert len(pages) == CONCEPTS.shape[1]
    assert 'http-equiv="refresh"' in pages[0] and "running: period 0 done" in pages[0]
    assert pages[0].count("<tr") < pages[-1].count("<tr")  # it grows with the run
    final = (tmp_path / "run" / "report.html").read_text()
    assert "refresh" not in final and "finished" in final
    for version in versions(tmp_path / "run"):
        assert f"<td>v{version.version}</td>" in final
    assert "mean_prequential_accuracy" in final and "id=events" in final


def test_a_slow_page_takes_a_bounded_share_of_the_run_and_is_written_at_its_end(
    make_controller: MakeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18, item 8: a 1,000-period run's page took 34 ms to rebuild after every period,
    so the run's cost per period grew with its length."""
    written: list[bool] = []

    def slow_page(run_dir: Path, finished: bool = False) -> None:
        written.append(finished)
        time.sleep(0.05)

    monkeypatch.setattr("fedretrain.retraining.controller.write_report", slow_page)
    controller, _ = make_controller(CONCEPTS)
    for _ in range(20):  # periods far shorter than the page
        controller._write_page()
    assert written == [False]  # the next is due 0.95 s after a 0.05 s rewrite
    controller._write_page(finished=True)
    assert written == [False, True]
    controller._page_due = 0.0  # as when its time has come
    controller._write_page()
    assert written == [False, True, False]


def test_a_drift_run_draws_its_rounds_in_metrics_png(
    make_controller: MakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[tuple[int, str]] = []
    monkeypatch.setattr(
        "fedretrain.report.plot_metrics", lambda table, path: drawn.append((len(table), path.name))
    )
    controller, _ = make_controller(CONCEPTS)
    controller.run()
    rounds = len((tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()) - 1
    assert rounds > 0 and drawn == [(rounds, "metrics.png")]  # once, at the end


def test_text_from_the_run_is_escaped(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "rejections.csv").write_text(
        'round,phase,node_id,reason\n1,train,7,"<script>x</script>"\n'
    )
    page = write_report(run).read_text()
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_chromium_shows_the_plots_the_timeline_and_the_registry(
    make_controller: MakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller, _ = make_controller(CONCEPTS)
    controller.run()
    monkeypatch.undo()  # the real plots, for `fedretrain report` to draw
    run = tmp_path / "run"
    assert cli.main(["report", str(run)]) == 0
    url = (run / "report.html").resolve().as_uri()
    browser = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    dom = subprocess.run(
        [*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    # The page's own script counts what the browser shows: decoded images, timeline rows.
    assert re.search(r'data-images-shown="2"', dom), dom[:500]  # metrics.png, timeline.png
    assert re.search(rf'data-period-rows="{CONCEPTS.shape[1]}"', dom)
    assert "v2" in dom and "champion" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*browser, "--window-size=1000,1400", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 1400 and pixels.std() > 0.05  # drawn, not a blank page
