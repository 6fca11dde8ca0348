"""Shared test setup: offline, seeded, and a throwaway progress file."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def private_progress_file(tmp_path, monkeypatch):
    """Every test records progress in its own temporary file, never the learner's."""
    path = tmp_path / "progress.json"
    monkeypatch.setenv("WORKBOOK_PROGRESS", str(path))
    return path
