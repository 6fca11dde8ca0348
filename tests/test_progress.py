"""The learner's record: attempts, best status, and corrupted files set aside, never lost."""

import json

from utils import progress


def test_attempts_and_best_status(private_progress_file):
    progress.record_attempt("00_orientation", "0.1", "a rule", "wrong")
    progress.record_attempt("00_orientation", "0.1", "a rule", "passed")
    progress.record_attempt("00_orientation", "0.1", "a rule", "wrong")
    progress.record_attempt("00_orientation", "0.2", "units", "not attempted")
    entry = json.loads(private_progress_file.read_text())["00_orientation"]
    assert entry["0.1"]["status"] == "passed" and entry["0.1"]["attempts"] == 3
    assert entry["0.2"]["status"] == "not attempted" and entry["0.2"]["attempts"] == 0


def test_table_lists_every_exercise_in_order(private_progress_file):
    for exercise_id in ["0.10", "0.2", "0.1"]:
        progress.record_attempt("00_orientation", exercise_id, f"ex {exercise_id}", "passed")
    table = progress.progress_table()
    assert table.splitlines()[0] == "00_orientation: 3/3 passed"
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["0.1", "0.2", "0.10"]


def test_corrupted_file_is_set_aside_not_overwritten(private_progress_file, capsys):
    private_progress_file.write_text("{ this is not json")
    progress.record_attempt("00_orientation", "0.1", "a rule", "passed")
    kept = list(private_progress_file.parent.glob("progress.corrupt-*.json"))
    assert len(kept) == 1 and kept[0].read_text() == "{ this is not json"
    message = capsys.readouterr().out.strip()
    assert "could not be read" in message and len(message.splitlines()) == 1
    assert json.loads(private_progress_file.read_text())["00_orientation"]["0.1"]["status"] == "passed"


def test_wrong_structure_counts_as_corrupted(private_progress_file):
    private_progress_file.write_text(json.dumps(["a", "list"]))
    assert progress.load_progress() == {}
    assert list(private_progress_file.parent.glob("progress.corrupt-*.json"))


def test_unwritable_location_reports_instead_of_crashing(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("WORKBOOK_PROGRESS", str(blocker / "progress.json"))
    progress.record_attempt("00_orientation", "0.1", "a rule", "passed")
    assert "could not save progress" in capsys.readouterr().out
