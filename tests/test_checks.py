"""The check framework: one-line verdicts, mistake hints, fallback to the reference."""

import pytest
import torch

from utils.checks import Wrong, check_exercise, expect_close, expect_equal, expect_tensor, grade


def test_expect_tensor_names_shape_dtype_nan_and_values():
    expected = torch.arange(6.0).reshape(2, 3)
    with pytest.raises(Wrong, match=r"should be a torch.Tensor of shape \[2, 3\], got list"):
        expect_tensor([1, 2], expected)
    with pytest.raises(Wrong, match=r"has shape \[3, 2\], expected \[2, 3\]"):
        expect_tensor(expected.T, expected)
    with pytest.raises(Wrong, match="dtype torch.int64"):
        expect_tensor(expected.long(), expected)
    with pytest.raises(Wrong, match="contains NaN"):
        expect_tensor(expected * float("nan"), expected)
    wrong = expected.clone()
    wrong[1, 2] = 9
    with pytest.raises(Wrong, match=r"up to 4 \(at index \[1, 2\]: got 9, expected 5\)"):
        expect_tensor(wrong, expected)
    expect_tensor(expected + 1e-6, expected)  # within tolerance


def test_known_mistake_is_named():
    expected = torch.tensor([1.0, 2.0])
    with pytest.raises(Wrong, match="forgot to square"):
        expect_tensor(torch.tensor([1.0, 1.414]), expected, mistakes={"forgot to square": torch.tensor([1.0, 1.414])})


def test_expect_equal_and_close():
    with pytest.raises(Wrong, match="should be a str"):
        expect_equal(3, " Mary")
    with pytest.raises(Wrong, match="used the first position"):
        expect_equal(" John", " Mary", mistakes={"used the first position": " John"})
    expect_close(torch.tensor(0.5), 0.5)
    with pytest.raises(Wrong, match="should be a number"):
        expect_close("0.5", 0.5)
    with pytest.raises(Wrong, match="is NaN"):
        expect_close(float("nan"), 0.5)


def test_verdict_is_one_line_and_fallback_is_the_reference(capsys):
    def stub(age, income):
        raise NotImplementedError

    returned = check_exercise("0.1", stub)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Exercise 0.1 (a rule-based model): not attempted. Replace the NotImplementedError with your code"
    assert "reference solution" in out[1]
    assert returned is grade.__globals__["get_exercise"]("0.1").reference


def test_passing_answer_is_kept_and_recorded(private_progress_file, capsys):
    from utils.references.ch00_orientation import rule_based_risk

    def mine(age, income):
        return rule_based_risk(age, income)

    assert check_exercise("0.1", mine) is mine
    assert capsys.readouterr().out.strip() == "Exercise 0.1 (a rule-based model): passed."
    assert '"status": "passed"' in private_progress_file.read_text()


def test_learner_exception_becomes_a_verdict():
    def buggy(age, income):
        return age.reshape(7, -1)

    verdict = grade("0.1", buggy)
    assert verdict.status == "wrong" and "your function raised RuntimeError" in verdict.message


def test_unknown_exercise_id():
    with pytest.raises(KeyError, match="no exercise '9.9'"):
        grade("9.9", lambda: None)
