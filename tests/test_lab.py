"""`make lab` serves the chapters: start JupyterLab on a free port, fetch a chapter, stop it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_flags() -> list[str]:
    """The flags `make lab` passes to JupyterLab, read from the Makefile itself."""
    text = subprocess.run(["make", "--no-print-directory", "-s", "-p", "-n", "-f", "Makefile", "lab"], cwd=ROOT,
                          capture_output=True, text=True).stdout
    line = next(line for line in text.splitlines() if line.startswith("LAB_FLAGS :="))
    return line.split(":=", 1)[1].split()


def test_make_lab_allows_root_exactly_when_run_as_root():
    """JupyterLab exits at once as root without --allow-root (a container, Colab's terminal)."""
    assert ("--allow-root" in lab_flags()) == (os.geteuid() == 0)


def test_lab_serves_chapter_00(tmp_path):
    port, token = _free_port(), "workbook-test"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", *lab_flags(), "--no-browser", f"--port={port}",
         "--ip=127.0.0.1", f"--ServerApp.token={token}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path)})
    try:
        url = f"http://127.0.0.1:{port}/api/contents/00_orientation.ipynb?token={token}"
        deadline, reply = time.monotonic() + 90, None
        while time.monotonic() < deadline and reply is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    reply = json.load(response)
            except OSError:
                assert server.poll() is None, "JupyterLab exited early"
                time.sleep(0.5)
        assert reply is not None, "JupyterLab did not answer within 90 s"
        assert reply["type"] == "notebook" and reply["content"]["cells"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as response:
            assert response.status == 200 and b"JupyterLab" in response.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
