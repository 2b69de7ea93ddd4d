"""Fixtures for the web demo tests: what the tests need installed, a tiny pipeline standing in for the
default model, and a launched app on the loopback interface.

`ensure_python_packages` pip-installs Gradio and Playwright (the Python package only; Playwright's own
browser downloads are never used) when they are missing; `ensure_chromium` runs ``apt-get install -y
chromium`` when ``/usr/bin/chromium`` is missing. Every subprocess has a time limit.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Flags of the headless browser: no sandbox (containers run as root), no GPU, no background traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PYTHON_PACKAGES = {"gradio": "gradio", "playwright": "playwright"}  # import name -> pip requirement
INSTALL_TIMEOUT_S = 600


def ensure_python_packages() -> None:
    """Import Gradio and Playwright, pip-installing the missing ones into this interpreter first.

    Fails the test (not a skip) when pip cannot install them: the ``test`` extra should name them."""
    missing = [req for name, req in PYTHON_PACKAGES.items() if importlib.util.find_spec(name) is None]
    if not missing:
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", *missing]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` did not finish within {INSTALL_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed:\n{done.stderr[-2000:]}")
    importlib.invalidate_caches()


def ensure_chromium() -> Path:
    """The Debian Chromium binary, installed with apt-get when missing; skips the test with the reason
    when it cannot be installed (not root, no apt-get, no package source)."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install the `chromium` package")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing the `chromium` package needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(command)}` did not finish within {INSTALL_TIMEOUT_S} s")
        if done.returncode != 0:
            pytest.skip(f"cannot install the browser: `{' '.join(command)}` failed: {done.stderr[-500:]}")
    if not CHROMIUM.exists():
        pytest.skip(f"the `chromium` package installed no {CHROMIUM}")
    return CHROMIUM


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Playwright importable and the Debian Chromium binary present (installed when missing, else skip)."""
    ensure_python_packages()
    return ensure_chromium()


@pytest.fixture(scope="session")
def gradio_module():
    """The ``gradio`` module (installed when missing)."""
    ensure_python_packages()
    return importlib.import_module("gradio")


@pytest.fixture(scope="session")
def web_pipe(tmp_path_factory):
    """The pipeline the web tests serve: the shipped default model when it is built, else a tiny random
    checkpoint (`write_tiny_official_checkpoint`) standing in for it. Returns (pipe, is_shipped_model)."""
    from unimask.default_model import default_model_available
    from unimask.pipelines import UniPipeline
    from unimask.pipelines.tiny_uni_checkpoint import write_tiny_official_checkpoint

    if default_model_available():
        pipe, shipped = UniPipeline.from_pretrained(), True
    else:
        pipe, shipped = UniPipeline.from_pretrained(write_tiny_official_checkpoint(tmp_path_factory.mktemp("tiny"))), False
    pipe.set_progress_bar_config(disable=True)
    return pipe, shipped


UPLOAD_LIMIT_BYTES = 4096


@pytest.fixture()
def tiny_default_dir(monkeypatch, tmp_path):
    """Point the default model at a tiny random pipeline saved in our layout, for one test."""
    import unimask.default_model as default_model
    from unimask.pipelines import UniPipeline
    from unimask.pipelines.tiny_uni_checkpoint import write_tiny_official_checkpoint

    saved = UniPipeline.from_pretrained(write_tiny_official_checkpoint(tmp_path / "official")).save_pretrained(
        tmp_path / "default_model"
    )
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", saved)
    return saved


@pytest.fixture(scope="session")
def launched(gradio_module, web_pipe):
    """The app of `web_pipe` served on 127.0.0.1 (free port, upload cap `UPLOAD_LIMIT_BYTES`).
    Yields (app, url, is_shipped_model); the server is closed after the session."""
    from unimask.web_demo import build_app, launch_app

    pipe, shipped = web_pipe
    app = build_app(pipe, model_name="shapes-default" if shipped else "tiny stand-in", seed=0)
    url = launch_app(app, port=None, max_file_size=UPLOAD_LIMIT_BYTES, block=False)
    try:
        yield app, url, shipped
    finally:
        app.close()
