"""The claims helper (tests/claims.py) and the robustness run that reads its records (utils/claims.py)."""

from __future__ import annotations

import json

import pytest

from tests.claims import claim, claim_generator, claim_seed
from utils import claims as run


def test_claim_asserts_with_its_margin_and_records_every_measurement(tmp_path, monkeypatch):
    report = tmp_path / "claims.jsonl"
    monkeypatch.setenv("WORKBOOK_CLAIM_REPORT", str(report))
    monkeypatch.setenv("WORKBOOK_CLAIM_SEED", "3")
    assert claim_seed() == 3
    assert claim("a: accuracy", 0.93, above=0.9) == pytest.approx(0.03)
    assert claim("a: error", 0.02, below=0.05) == pytest.approx(0.03)
    with pytest.raises(AssertionError, match=r"claim 'a: too low': measured 0.85, bar > 0.9, margin -0.05 \(claim seed 3\)"):
        claim("a: too low", 0.85, above=0.9)
    with pytest.raises(ValueError, match="exactly one of"):
        claim("a: no bar", 0.5)
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(r["claim"], r["seed"], r["margin"] > 0) for r in rows] == [
        ("a: accuracy", 3, True), ("a: error", 3, True), ("a: too low", 3, False)]
    assert rows[0]["test"].endswith("test_claim_asserts_with_its_margin_and_records_every_measurement")


def test_claim_generator_adds_the_claim_seed(monkeypatch):
    import torch

    monkeypatch.setenv("WORKBOOK_CLAIM_SEED", "2")
    assert torch.equal(torch.rand(3, generator=claim_generator(5)), torch.rand(3, generator=torch.Generator().manual_seed(7)))


def test_seed_and_thread_lists_parse_and_bad_ones_are_explained():
    assert run.parse_ints("0-4") == [0, 1, 2, 3, 4] and run.parse_ints("1,2") == [1, 2]
    assert run.parse_ints("0-1,7") == [0, 1, 7]
    with pytest.raises(Exception, match="expected numbers like 0-4"):
        run.parse_ints("a-b")


def test_the_table_puts_the_smallest_margin_first_and_flags_a_failure(tmp_path, capsys):
    records = [
        {"claim": "x: wide", "value": 0.99, "bar": 0.5, "direction": ">", "margin": 0.49, "seed": 0, "threads": "1"},
        {"claim": "x: wide", "value": 0.95, "bar": 0.5, "direction": ">", "margin": 0.45, "seed": 1, "threads": "2"},
        {"claim": "x: edge", "value": 0.07, "bar": 0.05, "direction": "<", "margin": -0.02, "seed": 1, "threads": "1"},
        {"claim": "x: edge", "value": 0.04, "bar": 0.05, "direction": "<", "margin": 0.01, "seed": 0, "threads": "1"},
    ]
    rows = run.summarise(records)
    assert [row["claim"] for row in rows] == ["x: edge", "x: wide"]
    assert rows[0]["worst value"] == 0.07 and rows[0]["failed"] == 1 and rows[0]["runs"] == 2
    assert rows[1]["worst value"] == 0.95 and rows[1]["worst run"] == "seed 1, threads 2"
    text = run.table(rows)
    assert text.splitlines()[1].startswith("x: edge") and "FAILED" in text.splitlines()[1]
    (tmp_path / "seed0.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert run.main(["--table-only", str(tmp_path)]) == 1  # a failed claim fails the run
    assert "x: edge" in capsys.readouterr().out


def test_every_claim_module_is_found_and_the_framework_tests_are_not():
    names = {path.name for path in run.claim_modules()}
    assert {"test_probing.py", "test_orientation.py", "test_superposition.py"} <= names
    assert not names & {"test_exercises.py", "test_checks.py", "test_claims.py"}


def test_make_claims_runs_the_robustness_run_and_make_test_does_not():
    makefile = (run.ROOT / "Makefile").read_text()
    target = makefile.split("\nclaims: install\n", 1)[1].splitlines()[0]
    assert "utils.claims" in target and "--seeds $(CLAIM_SEEDS)" in target and "--threads $(CLAIM_THREADS)" in target
    test = makefile.split("\ntest: install sandbox\n", 1)[1].splitlines()[0]
    assert "claims" not in test


def test_jobs_run_every_seed_and_thread_setting_once(tmp_path, monkeypatch, capsys):
    done = []

    def fake_run(modules, seed, threads, out, pytest_args):
        done.append((seed, threads))
        report = out / f"seed{seed}-threads{threads}.jsonl"
        report.write_text(json.dumps({"claim": "x: one", "value": 0.9, "bar": 0.5, "direction": ">",
                                      "margin": 0.4, "seed": seed, "threads": str(threads)}) + "\n")
        return run.Run(seed, threads, report)

    monkeypatch.setattr(run, "run_once", fake_run)
    module = tmp_path / "test_x.py"
    module.write_text("")
    assert run.main([str(module), "--seeds", "0-1", "--threads", "1,2", "--jobs", "2", "--out", str(tmp_path / "out")]) == 0
    assert sorted(done) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "1 claims, 4 runs" in capsys.readouterr().out
