"""`casckpt report`: a self-contained HTML page whose plots render in a real (headless) browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clikit import REPO, cli_json
from storekit import new_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOTS = ("storage", "dedup", "change", "retention")


@pytest.fixture
def report(tmp_path):
    root = tmp_path / "s"
    rng = np.random.default_rng(0)
    state = {f"layers.{k}.w": rng.standard_normal((64, 64)).astype(np.float32) for k in range(5)}
    with new_store(root) as store:
        for step in range(8):
            for k in range(5):
                if (step + k) % 3 == 0:
                    state[f"layers.{k}.w"] = state[f"layers.{k}.w"] + np.float32(0.01 * (k + 1))
            store.put_arrays(f"step-{step}", {**state, "step": np.array(step)})
    out = tmp_path / "report"
    page = cli_json("report", root, "--out", out, "--keep-last", "2", "--keep-every", "3")["page"]
    return out, page


def test_report_is_one_self_contained_page_with_four_plots(report):
    out, page = report
    text = open(page).read()
    srcs = re.findall(r'<img id="plot-(\w+)" alt="[^"]*" src="([^"]*)"', text)
    assert [k for k, _ in srcs] == list(PLOTS)
    assert all(s.startswith("data:image/png;base64,") for _, s in srcs)  # nothing to fetch
    assert not re.search(r'(src|href)="(?!data:)', text)
    for k in PLOTS:
        assert (out / f"{k}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gc --keep-last 2 --keep-every 3" in text
    assert text.count(">kept<") == 4 and text.count(">dropped<") == 4  # seq 0, 3, 6 and the last 2


def test_report_without_matplotlib_names_the_extra(tmp_path):
    with new_store(tmp_path / "s") as store:
        store.put_arrays("a", {"w": np.ones(4, np.float32)})
    code = ("import sys; sys.modules['matplotlib'] = None; from casckpt.cli import main; "
            f"sys.exit(main(['report', {str(tmp_path / 's')!r}, '--out', {str(tmp_path / 'r')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "casckpt[report]" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: tools/test installs it when run as root "
                                              "(apt-get install chromium); elsewhere install it to run this")
def test_report_renders_its_plots_in_a_headless_browser(report, tmp_path):
    out, page = report
    # The page as shipped, plus a probe that records how many images decoded with a real size.
    probe = out / "probe.html"
    probe.write_text(open(page).read().replace("</body>", (
        '<script>window.addEventListener("load", () => { const i = [...document.images];'
        'document.body.setAttribute("data-loaded", i.filter(x => x.complete && x.naturalWidth > 100).length'
        ' + "/" + i.length); });</script></body>')))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-loaded="4/4"' in dom, dom[-500:]
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1000,2400", f"--screenshot={shot}", str(page)],
                   capture_output=True, timeout=120)
    import matplotlib.image
    px = matplotlib.image.imread(shot)[..., :3]
    ink = (px < 0.9).any(axis=-1).mean()  # share of pixels that are not white
    colors = len(np.unique((px * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert ink > 0.05 and colors > 100, (ink, colors)  # plots drew: not a blank or text-only page


def test_heatmap_data_marks_exactly_the_modules_that_moved(report, tmp_path):
    import math

    import casckpt
    from casckpt.report import changes

    with casckpt.Store.open(tmp_path / "s") as store:
        mods, labels, grid = changes(store, [f"step-{i}" for i in range(8)])
    assert mods == [f"layers.{k}" for k in range(5)] and labels == [f"step-{i}" for i in range(1, 8)]
    for k, row in enumerate(grid):
        moved = [i for i, v in enumerate(row, 1) if v and not math.isnan(v)]
        assert moved == [s for s in range(1, 8) if (s + k) % 3 == 0], (k, row)
