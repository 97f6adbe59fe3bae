"""Headless Chromium for the browser tests: the DOM it built and a screenshot, kept in test-artifacts/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from sandbox.names import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def skip_without_chromium() -> None:
    """Skip the calling test module when no Chromium is installed, saying how to get one."""
    if CHROMIUM is None:
        pytest.skip(
            "chromium is not installed: `make setup` installs it (Debian/Ubuntu: apt-get install "
            "--no-install-recommends chromium fonts-dejavu-core)",
            allow_module_level=True,
        )


def capture(
    url: str,
    screenshot: Path,
    profile: Path,
    size: tuple[int, int],
    flags: tuple[str, ...] = (),
    timeout: float = 180,
) -> str:
    """Headless Chromium's screenshot of ``url`` at ``size`` into ``screenshot``; the DOM it built."""
    screenshot.unlink(missing_ok=True)
    try:
        result = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", *flags,
                f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                f"--screenshot={screenshot}", "--dump-dom", url,
            ],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"chromium did not photograph {url} within {timeout:.0f}s") from exc
    if result.returncode != 0 or not screenshot.is_file():
        raise RuntimeError(f"chromium could not photograph {url}: {result.stderr[-3000:]}")
    return result.stdout


def render(
    url: str, name: str, profile: Path, size: tuple[int, int] = (1280, 1600), flags: tuple[str, ...] = ()
) -> tuple[str, Image.Image]:
    """The DOM as headless Chromium built it, and a screenshot of ``size`` kept as test-artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"{name}.png"
    dom = capture(url, screenshot, profile, size, flags)
    (ARTIFACTS / f"{name}.html").write_text(dom)
    return dom, Image.open(screenshot).convert("RGB")


def pixels_near(image: Image.Image, color: tuple[int, int, int], tolerance: int = 8) -> int:
    return sum(
        n
        for n, c in image.getcolors(maxcolors=image.width * image.height)
        if all(abs(a - b) <= tolerance for a, b in zip(c, color, strict=True))
    )


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
