"""The report as a reader gets it: report.html opened from disk in headless Chromium, and report.pdf."""

import re
import struct
import subprocess
import unicodedata

import numpy as np
from matplotlib.image import imread
from pypdf import PdfReader

from reports.figures import FIGURES
from reports.pdf import headless

# Added to a copy of the page: once everything has loaded, write each image's decoded width into
# the DOM, which --dump-dom then prints. A broken image has naturalWidth 0.
PROBE = """<script>
addEventListener("load", () => {
  document.body.dataset.widths = [...document.images].map(i => i.complete ? i.naturalWidth : -1).join(",");
});
</script></body>"""


def chromium_run(chromium: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = headless(chromium, tmp_path / "profile", *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_every_figure_loads_from_disk(demo_report, chromium, tmp_path):
    page = tmp_path / "report.html"  # a copy away from the figures/ folder: only embedded images can load
    page.write_text(demo_report["html"].read_text().replace("</body>", PROBE))
    dom = chromium_run(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()).stdout
    widths = [int(w) for w in re.search(r'data-widths="([^"]*)"', dom).group(1).split(",")]
    assert len(widths) == len(FIGURES) and min(widths) > 500, widths


def test_a_screenshot_of_the_report_shows_it(demo_report, chromium, tmp_path):
    shot = tmp_path / "report.png"
    chromium_run(
        chromium,
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1400,2400",
        "--hide-scrollbars",
        demo_report["html"].as_uri(),
    )
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG header's IHDR
    assert (width, height) == (1400, 2400)
    pixels = (imread(shot)[..., :3] * 255).astype(np.int64)
    colours = np.unique(pixels @ np.array([1 << 16, 1 << 8, 1]))
    # Not a blank page: dark text on white, and the figures' colours.
    assert pixels.min() < 50 and pixels.max() > 230 and colours.size > 1000


def test_pdf_has_the_summary_then_a_page_per_figure_then_the_tables(demo_report, chromium):
    assert demo_report["pdf_error"] is None
    # NFKC undoes the ligatures (ﬁ) the PDF's text comes with
    pages = [
        " ".join(unicodedata.normalize("NFKC", p.extract_text()).split()) for p in PdfReader(demo_report["pdf"]).pages
    ]
    assert pages[0].startswith("Demo sweep Summary 122 runs")
    for i, spec in enumerate(FIGURES, start=1):
        assert " ".join(spec.caption.split()[:6]) in pages[i], (i, spec.stem)  # its own page, in order
    assert pages[len(FIGURES) + 1].startswith("Fitted scaling laws")
    assert any(p.startswith("Runs All runs") for p in pages[len(FIGURES) + 1 :])
