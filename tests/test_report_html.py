"""compare.html: self-contained, every point and task names itself on hover, and a headless browser
renders it (the DOM it parses and a screenshot whose pixels show the plot)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from planner.report import compare_runs
from planner.report_files import write_report
from planner.report_html import KIND_COLORS

RUNS = Path(__file__).parent / "fixtures" / "runs"
ALL = ["dp2", "pp2", "tp2", "dp2-fsdp", "contended", "failed"]
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    write_report(compare_runs([RUNS / n for n in ALL]), out)
    return out / "compare.html"


def test_self_contained_and_hover_names_each_plan(page):
    text = page.read_text()
    assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)
    titles = re.findall(r"<circle[^>]*><title>([^<]*)</title>", text)
    parallel = [json.loads((RUNS / n / "summary.json").read_text())["parallel"] for n in ALL[:5]]
    assert len(titles) == 5 and all(any(p in t for t in titles) for p in parallel)
    assert "fixture failure" in text  # the failed run is listed


def test_timeline_draws_every_task_of_the_pipelined_run(page):
    summary = json.loads((RUNS / "pp2" / "summary.json").read_text())
    predicted = len(summary["prediction"]["timeline"])
    text = page.read_text()
    rects = re.findall(r'<rect class="task"[^>]*fill="([^"]+)"><title>(predicted|measured)', text)
    assert sum(1 for _, side in rects if side == "predicted") == predicted
    assert f"all {predicted} predicted" in text
    colours = {c for c, _ in rects}
    assert colours <= set(KIND_COLORS.values()) and len(colours) >= 2  # forward and backward told apart


@pytest.mark.skipif(BROWSER is None, reason="no headless chromium on this machine (make setup installs it as root)")
def test_headless_browser_renders_it(page, tmp_path):
    base = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert dom.stdout.count("<circle") == 5 and "<svg" in dom.stdout
    shot = tmp_path / "compare.png"
    done = subprocess.run(base + ["--window-size=1100,1400", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-500:]
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    blue = (abs(pixels[..., 0] - 0x4C) <= 2) & (abs(pixels[..., 1] - 0x72) <= 2) & (abs(pixels[..., 2] - 0xB0) <= 2)
    assert blue.sum() > 50  # the scatter's points (and forward tasks) were drawn
