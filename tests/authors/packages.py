"""The example packages, installed as a service author installs theirs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def pip_install(packages: list[Path], target: Path) -> None:
    """``pip install --target``: a real install (dist-info, entry points), outside the venv."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(target),
            *map(str, packages),
        ],
        check=True,
        timeout=300,
    )


def install_examples(root: Path) -> Path:
    """Both examples installed into ``root/site`` (copied first: a build writes beside its
    sources, and the repository stays clean); the folder to put on ``PYTHONPATH``."""
    site = root / "site"
    site.mkdir(exist_ok=True)
    copies = [
        shutil.copytree(EXAMPLES / name, root / name)
        for name in ("billing_handler", "faststream_handler")
    ]
    pip_install(copies, site)
    return site
