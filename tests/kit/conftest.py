"""Installing connector packages the way a user does, without touching the project's environment.

A package is copied into the test's folder (pip builds in the source tree),
installed with `pip install --target` into a folder of its own, and used with
that folder on PYTHONPATH: `importlib.metadata` then sees its
`kanal.connectors` entry point, exactly as after a real install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kanal-jsonapi"
KANAL = [sys.executable, "-m", "kanal"]


@dataclass(frozen=True)
class Installed:
    """A connector package installed into `site`; its copy (with its tests) in `folder`."""

    folder: Path
    site: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # the outer run's options are not theirs
        return {**env, "PYTHONPATH": str(self.site), "COLUMNS": "200"}

    def kanal(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KANAL, *args], cwd=cwd or self.folder.parent, env=self.env, capture_output=True,
                              text=True, timeout=120)

    def pytest(self, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
        """Run the package's tests; returns the process and each test's outcome (passed, failed, skipped)."""
        report = self.folder.parent / f"report-{len(list(self.folder.parent.glob('report-*.xml')))}.xml"
        # Its own --basetemp: by default pytest keeps only the newest three temp folders of a user, so
        # runs started from a test would delete the running suite's folder (its PostgreSQL data among them).
        basetemp = self.folder.parent / f"pytest-{report.stem}"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=90", f"--basetemp={basetemp}",
             f"--junitxml={report}", *args],
            cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=240,
        )
        return proc, outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        found[f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"] = outcome
    return found


def install(package: Path, tmp: Path) -> Installed:
    folder = tmp / package.name
    shutil.copytree(package, folder, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(folder)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return Installed(folder, site)
