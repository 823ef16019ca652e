"""The HTML report opens in a real browser (headless Chromium) without JavaScript errors.

Needs Debian's ``chromium``: skipped without it, unless ``MASF_REQUIRE_SERVICES=1`` (then it fails).
With ``MASF_UPDATE_SCREENSHOT=1`` it also refreshes the committed ``docs/report-screenshot.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "report-screenshot.png"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("MASF_REQUIRE_SERVICES") == "1":
        pytest.fail("chromium is not installed but MASF_REQUIRE_SERVICES=1")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--window-size=1400,1000",
    ]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A tiny sweep (Lorenz-96, EnKF and LETKF, one seed) run through Snakemake; its report.html."""
    chromium = _chromium()
    assert chromium
    work = tmp_path_factory.mktemp("report")
    cfg = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    exp = cfg["experiments"]["l96"]
    exp.update(methods=["enkf", "letkf"], seeds=[0])
    cfg["experiments"] = {"l96": exp}
    cfg["methods"] = {k: cfg["methods"][k] for k in ("enkf", "letkf")}
    config = work / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2"]
    done = subprocess.run(
        [*command, "--directory", str(work), "--configfile", str(config)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    path = work / "results" / "report.html"
    assert path.is_file(), done.stderr[-3000:]
    return path


@pytest.mark.service
@pytest.mark.slow
def test_report_renders_without_console_errors(report, tmp_path):
    chromium = _chromium()
    dom = _browser(chromium, tmp_path / "profile1", "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [
        line
        for line in dom.stderr.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "Error" in line or ":ERROR:" in line)
    ]
    assert not errors, "\n".join(errors)
    # the report's JavaScript has rendered its navigation (the raw file holds only the data bundle)
    assert "<body" in dom.stdout and len(dom.stdout) > 10_000

    shot = tmp_path / "shot.png"
    taken = _browser(chromium, tmp_path / "profile2", f"--screenshot={shot}", report.as_uri())
    assert taken.returncode == 0, taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    if os.environ.get("MASF_UPDATE_SCREENSHOT") == "1":  # refresh the committed docs/ copy on request
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
