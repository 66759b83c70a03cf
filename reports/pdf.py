"""The report's PDF: headless Chromium prints report.html (its print stylesheet puts the summary,
each figure and the tables on pages of their own).

Chromium is a system program, not a Python package: `apt-get install chromium` on Debian and
Ubuntu, or point SCALING_CHROMIUM at any Chromium or Chrome binary. Without it the PDF step
raises `PdfError` with that advice, and the HTML and Markdown reports are unaffected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "install Chromium for the PDF (Debian/Ubuntu: `apt-get install -y chromium`; `make browser` does it as root), "
    "or set SCALING_CHROMIUM to a Chromium or Chrome binary"
)
TIMEOUT_S = 120.0


class PdfError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """SCALING_CHROMIUM if set, else the first Chromium or Chrome on PATH."""
    if explicit := os.environ.get("SCALING_CHROMIUM"):
        return explicit if shutil.which(explicit) else None
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


def headless(chromium: str, profile: Path, *args: str) -> list[str]:
    """A headless Chromium command line with its own throw-away profile (two instances sharing the
    default profile hand their work to each other, or fail on its lock)."""
    flags = ["--headless", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}"]
    if os.geteuid() == 0:  # Chromium refuses to start its sandbox as root; the page is our own file
        flags.append("--no-sandbox")
    return [chromium, *flags, *args]


def print_pdf(html: Path, pdf: Path, timeout_s: float = TIMEOUT_S) -> Path:
    """Print `html` to `pdf`; raises PdfError (saying what to do) when Chromium is missing or fails."""
    chromium = find_chromium()
    if chromium is None:
        raise PdfError(f"no PDF: Chromium not found; {INSTALL_HINT}")
    pdf = Path(pdf).resolve()
    tmp = pdf.with_name(f".{pdf.name}.tmp")
    with tempfile.TemporaryDirectory(prefix="scaling-chromium-") as profile:
        cmd = headless(
            chromium, Path(profile), "--no-pdf-header-footer", f"--print-to-pdf={tmp}", Path(html).resolve().as_uri()
        )
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as err:
            raise PdfError(f"no PDF: {chromium} did not finish printing in {timeout_s:.0f} s") from err
    if proc.returncode != 0 or not tmp.is_file() or tmp.read_bytes()[:5] != b"%PDF-":
        tmp.unlink(missing_ok=True)
        # Chromium logs harmless D-Bus complaints on stderr; its last lines say what went wrong.
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise PdfError(f"no PDF: {chromium} exited with {proc.returncode}:\n{tail}")
    os.replace(tmp, pdf)
    return pdf
