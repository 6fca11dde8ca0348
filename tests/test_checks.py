"""The check framework: one-line verdicts, mistake hints, fallback to the reference, and the rules
every check relies on (stubs told from library errors, no state leaks, several inputs)."""

import numpy as np
import pytest
import torch
from torch import nn

from utils.checks import (NOT_ATTEMPTED, NotAttempted, Wrong, call, call_on_inputs, check_exercise, exercise,
                          expect_close, expect_equal, expect_tensor, get_exercise, grade, hooks_reset)


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
    with pytest.raises(Wrong, match=r"differ by up to 4 \(at index \[1, 2\]: got 9, expected 5; 1 of 6 entries are off\)"):
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
    with pytest.raises(KeyError, match="no exercise '9.99'"):
        grade("9.99", lambda: None)


# ------------------------------------------------------------------------------------------
# The framework's rules
# ------------------------------------------------------------------------------------------
def test_a_stub_is_not_attempted_but_a_library_not_implemented_error_is_an_error():
    def stub(x):
        raise NotImplementedError("write this")

    class NoForward(nn.Module):  # torch raises NotImplementedError from inside nn.Module
        pass

    def uses_a_module_without_forward(x):
        return NoForward()(x)

    with pytest.raises(NotAttempted):
        call(stub, torch.ones(2))
    with pytest.raises(Wrong, match=r"your function raised NotImplementedError.*line \d+: return NoForward\(\)\(x\)"):
        call(uses_a_module_without_forward, torch.ones(2))


def test_a_stub_defined_in_exec_source_is_not_attempted():
    namespace = {}
    exec("def stub(x):\n    raise NotImplementedError\n", namespace)  # noqa: S102 - how a notebook cell runs
    with pytest.raises(NotAttempted):
        call(namespace["stub"], 1)


def test_calling_with_wrong_arguments_names_the_call_not_a_line_of_ours():
    with pytest.raises(Wrong, match=r"^calling your function raised TypeError") as raised:
        call(lambda: 0, 1, 2)
    assert "(line" not in str(raised.value)


@pytest.mark.parametrize("answer", [np.arange(600.0).reshape(20, 30), "line one\nline two\n" * 50,
                                    {"a": torch.arange(400).reshape(20, 20)}])
def test_odd_answers_give_one_line_verdicts(answer):
    exercise("9.1", "a test exercise", "99_test", lambda: None)(
        lambda candidate: expect_tensor(call(candidate), torch.zeros(3)))
    try:
        verdict = grade("9.1", lambda: answer)
    finally:
        del grade.__globals__["REGISTRY"]["9.1"]
    assert verdict.status == "wrong" and "\n" not in str(verdict) and len(str(verdict)) < 500, str(verdict)
    if isinstance(answer, np.ndarray):
        assert "a numpy ndarray of shape [20, 30]" in verdict.message


def test_a_multi_line_error_message_gives_a_one_line_verdict():
    def raises_long(x):
        raise ValueError("first line\nsecond line\n" + "x" * 1000)

    with pytest.raises(Wrong) as raised:
        call(raises_long, 1)
    assert "\n" not in str(raised.value) and len(str(raised.value)) <= 400


def test_call_on_inputs_calls_once_per_case_in_order():
    seen = []

    def record(x, scale=1):
        seen.append((x, scale))
        return x * scale

    assert call_on_inputs(record, [((1,), {}), ((2,), {"scale": 3}), ((4,), {"scale": -1})]) == [1, 6, -4]
    assert seen == [(1, 1), (2, 3), (4, -1)]


def test_call_on_inputs_catches_a_memoised_answer():
    memo = {}

    def memoised(x):
        return memo.setdefault("first", x * 2)

    results = call_on_inputs(memoised, [((torch.tensor(1.0),), {}), ((torch.tensor(5.0),), {})])
    with pytest.raises(Wrong, match="is 2, expected 10"):
        for result, x in zip(results, (1.0, 5.0)):
            expect_close(result, 2 * x)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, x):
        return self.layer(x)


def test_hooks_reset_removes_raw_torch_hooks_and_restores_training_mode_and_weights():
    model = _Tiny().eval()
    x = torch.ones(1, 2)
    before = model(x).detach()

    def leaky(model):
        model.layer.register_forward_hook(lambda module, inputs, output: output * 0)
        model.layer.register_forward_pre_hook(lambda module, inputs: (inputs[0] * 2,))
        model.train()
        model.layer.weight.requires_grad_(False)
        with torch.no_grad():
            model.layer.bias.add_(10.0)
        torch.set_grad_enabled(False)

    with pytest.raises(Wrong, match=r"left hooks on 1 hook points of the model \(layer\)"):
        call(leaky, model)  # call() resets every model it passes on, and says what was left
    assert torch.is_grad_enabled()
    assert not model.training and model.layer.weight.requires_grad
    assert not model.layer._forward_hooks and not model.layer._forward_pre_hooks
    assert torch.equal(model(x).detach(), before)


def test_hooks_reset_keeps_the_hooks_a_model_had_when_first_seen():
    model = _Tiny()
    model.layer.register_forward_hook(lambda module, inputs, output: output + 1)
    with hooks_reset(model):
        model.layer.register_forward_hook(lambda module, inputs, output: output * 0)
    assert len(model.layer._forward_hooks) == 1


@pytest.fixture(scope="module")
def organism():
    from utils.models import load_model

    return load_model(verbose=False, device="cpu")


def test_hooks_reset_removes_transformer_lens_hooks(organism):
    tokens = organism.to_tokens("The capital of France is")
    with torch.no_grad():
        before = organism(tokens)

    def leaky(model):
        model.add_hook("blocks.0.hook_resid_post", lambda resid, hook: resid * 0)
        model.blocks[1].hook_resid_post.add_hook(lambda resid, hook: resid + 1)
        model.train()

    with pytest.raises(Wrong, match=r"left hooks on 2 hook points of the model \(blocks.0.hook_out, blocks.1.hook_out\)"):
        call(leaky, organism)
    with torch.no_grad():
        after = organism(tokens)
    assert torch.equal(after, before) and not organism.training
    with hooks_reset(organism):
        leaky(organism)
    with torch.no_grad():
        assert torch.equal(organism(tokens), before)


def test_a_hint_never_fires_for_a_correct_answer():
    expected = torch.tensor([1.0, 0.0, 2.0])
    same_as_correct_here = {"you forgot the ReLU": torch.tensor([1.0, 0.0, 2.0])}
    expect_tensor(expected.clone(), expected, mistakes=same_as_correct_here)
    expect_tensor(expected.double(), expected, mistakes=same_as_correct_here)  # any float dtype
    close_to_both = {"off by a little": expected + 1.5e-4}  # within tolerance of the answer, not equal to it
    expect_tensor(expected + 0.8e-4, expected, mistakes=close_to_both)
    expect_equal(" Mary", " Mary", mistakes={"used the first position": " Mary"})
    expect_close(0.5, 0.5, mistakes={"used >= 0": 0.5})
    expect_close(0.5004, 0.5, mistakes={"used >= 0": 0.5008})


def test_a_hint_gives_the_numbers_that_show_it():
    expected = torch.tensor([1.0, -2.0, 3.0])
    with pytest.raises(Wrong, match=r"^forgot the ReLU \(differs by up to 2, at index \[1\]: got 0, expected -2\)$"):
        expect_tensor(torch.relu(expected), expected, mistakes={"forgot the ReLU": torch.relu(expected)})
    with pytest.raises(Wrong, match=r"took the mean \(shape \[\], expected \[3\]\)"):
        expect_tensor(expected.mean(), expected, mistakes={"took the mean": expected.mean()})
    labels = torch.tensor([True, False, True, True])
    with pytest.raises(Wrong, match=r"inclusive \(1 of 4 entries differ; first at index \[1\]: got True, expected False\)"):
        expect_tensor(torch.ones(4, dtype=torch.bool), labels, mistakes={"inclusive": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(Wrong, match=r"reversed \(got -0.5, expected 0.5\)"):
        expect_close(-0.5, 0.5, mistakes={"reversed": -0.5})
    with pytest.raises(Wrong, match=r"first position \(got ' John', expected ' Mary'\)"):
        expect_equal(" John", " Mary", mistakes={"first position": " John"})


def test_a_float64_answer_is_compared_like_a_float32_one():
    expected = torch.linspace(0, 1, 5)
    expect_tensor(expected.double(), expected)
    with pytest.raises(Wrong, match="and the reference differ by up to"):
        expect_tensor(expected.double() + 1, expected)


def test_weights_edited_in_place_are_restored_and_reported():
    model = _Tiny()
    before = model.layer.weight.detach().clone()

    def edits(model):
        with torch.no_grad():
            model.layer.weight.mul_(0)
        return 1

    with pytest.raises(Wrong, match=r"changed 1 of the model's weights in place \(layer.weight\)"):
        call(edits, model)
    assert torch.equal(model.layer.weight, before)


def test_hooks_that_clean_up_after_themselves_are_fine():
    model = _Tiny()

    def tidy(model):
        handle = model.layer.register_forward_hook(lambda module, inputs, output: output * 2)
        try:
            return model(torch.ones(1, 2))
        finally:
            handle.remove()

    assert call(tidy, model).shape == (1, 2)


def test_mistakes_that_coincide_on_an_input_are_named_together():
    expected = torch.tensor([1.0, 2.0])
    wrong = torch.tensor([0.0, 0.0])
    with pytest.raises(Wrong, match=r"^one of these mistakes: scored on train; or trained on test \("):
        expect_tensor(wrong, expected, mistakes={"scored on train": wrong, "trained on test": wrong.clone()})


def test_the_learners_code_sees_a_freshly_seeded_global_generator_and_keeps_its_own():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = call(torch.rand, 3), call(torch.rand, 3)
    assert torch.equal(first, second)  # the same verdict on every run, even without a generator
    assert torch.equal(torch.get_rng_state(), state)  # the learner's own random stream is untouched


def test_an_input_changed_in_place_is_reported():
    def centres_in_place(x, extra):
        x -= x.mean()
        return x

    def edits_a_dict_value(values):
        values["a"].mul_(2)
        return values["a"]

    with pytest.raises(Wrong, match=r"changed its input argument 1 in place"):
        call(centres_in_place, torch.arange(3.0), 1)
    with pytest.raises(Wrong, match=r"changed its input argument 1\['a'\] in place"):
        call(edits_a_dict_value, {"a": torch.ones(2)})
    assert torch.equal(call(lambda x: x - x.mean(), torch.arange(3.0)), torch.tensor([-1.0, 0.0, 1.0]))


def test_a_verdict_does_not_depend_on_the_global_gradient_mode():
    verdicts = []
    for enabled in (True, False):
        with torch.set_grad_enabled(enabled):
            verdicts.append(str(grade("0.2", get_exercise("0.2").reference)))
    assert verdicts[0] == verdicts[1] and "passed" in verdicts[0]


def test_an_argument_the_exercise_asks_to_change_is_left_changed_and_not_reported():
    def train_in_place(module):
        with torch.no_grad():
            module.weight += 1.0
        return module

    trained, untouched = nn.Linear(2, 2), nn.Linear(2, 2)
    before = trained.weight.detach().clone()
    call(train_in_place, trained, allow_changes_to=(trained,))
    assert torch.allclose(trained.weight, before + 1.0)
    with pytest.raises(Wrong, match="in place"):
        call(train_in_place, untouched)


# ------------------------------------------------------------------------------------------
# Class 1: every input a check hands over is a copy, and a change to it is reported
# ------------------------------------------------------------------------------------------
def _extends(prompts, labels):
    prompts.append("one more prompt")  # the mistake: grows the caller's list
    return len(prompts)


def _sorts(prompts, labels):
    prompts.sort(key=len)  # the mistake: reorders the caller's list to cut padding
    return len(prompts)


def _relabels(prompts, labels):
    labels["truth"][0] = 1 - labels["truth"][0]  # the mistake: edits the caller's dict of lists
    return len(prompts)


def _copies(prompts, labels):
    prompts = sorted(prompts, key=len)  # a copy: fine
    return len(prompts)


@pytest.mark.parametrize("mistaken, words", [(_extends, "had 3 items and came back with 4"),
                                             (_sorts, "reordered"), (_relabels, "'truth'")])
def test_a_list_or_dict_argument_changed_in_place_is_reported_and_the_checks_own_stays_intact(mistaken, words):
    prompts, labels = ["a long prompt here", "short", "a prompt"], {"truth": [0, 1, 1]}
    with pytest.raises(Wrong, match=f"changed its input argument .* in place .*{words}"):
        call(mistaken, prompts, labels)
    assert prompts == ["a long prompt here", "short", "a prompt"] and labels == {"truth": [0, 1, 1]}
    assert call(_copies, prompts, labels) == 3  # the next answer, and the reference, see the same inputs


def test_a_prompt_set_is_handed_over_as_a_copy():
    from utils.organism.world import prompt_set

    prompts = prompt_set("ioi", "test", n=5, seed=0)
    kept = list(prompts.prompts)

    def truncates(ps):
        ps.prompts = ps.prompts[:2]
        return len(ps)

    with pytest.raises(Wrong, match="changed its input argument 1 \(a PromptSet of 5 items\) in place \(it had 5 items and came back with 2\)"):
        call(truncates, prompts)
    assert prompts.prompts == kept and len(prompts) == 5


def test_a_container_holding_a_model_or_a_tensor_that_needs_its_gradients_is_passed_through():
    model = nn.Linear(2, 2)
    weight = torch.ones(3, requires_grad=True)
    holder = {"model": model}

    def uses(things, tensors):
        assert things["model"] is model and tensors[0] is weight  # no copy of a model; tensors shared
        return (tensors[0] * 2).sum()

    loss = call(uses, holder, [weight])
    loss.backward()
    assert torch.equal(weight.grad, torch.full((3,), 2.0))


def test_an_argument_the_exercise_asks_to_change_may_be_a_list_it_fills():
    history = []
    call(lambda h: h.append(1.0), history, allow_changes_to=(history,))
    assert history == [1.0]


def test_weights_edited_through_data_are_restored_and_reported():
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()

    def edits_through_data(m):
        m.weight.data[0] = 0.0  # no version counter sees this
        return m(torch.ones(1, 3))

    def replaces_data(m):
        m.weight.data = torch.zeros(2, 3)
        return m(torch.ones(1, 3))

    for mistaken in (edits_through_data, replaces_data):
        with pytest.raises(Wrong, match="changed 1 of the model's weights in place .*weight"):
            call(mistaken, model)
        assert torch.equal(model.weight.detach(), before)


# ------------------------------------------------------------------------------------------
# Class 3: gradient flow, detached values, and the chapter's own call
# ------------------------------------------------------------------------------------------
def test_expect_differentiable_catches_no_grad_detach_and_gradient_free_operations():
    from utils.checks import expect_differentiable

    weight = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    expect_differentiable((x @ weight).pow(2).mean(), [weight])
    with torch.no_grad():
        under_no_grad = (x @ weight).pow(2).mean()
    with pytest.raises(Wrong, match="carries no gradient .*torch.no_grad"):
        expect_differentiable(under_no_grad, [weight], name="the loss")
    with pytest.raises(Wrong, match="carries no gradient"):
        expect_differentiable((x @ weight).detach().sum(), [weight])
    other = torch.randn(3, requires_grad=True)
    with pytest.raises(Wrong, match="no usable gradient reaches 1 of the 2 tensors"):
        expect_differentiable((x @ weight).sum() + other.argmax().float() * 0 + other.detach().sum(), [weight, other])
    with pytest.raises(Wrong, match="should be a torch.Tensor"):
        expect_differentiable(3.0, [weight])
    assert weight.grad is None  # the probe leaves no gradient behind


def test_expect_detached_finds_graph_holding_values_in_containers():
    from utils.checks import expect_detached

    weight = torch.randn(3, requires_grad=True)
    expect_detached([1.0, 2.0, torch.tensor(3.0)])
    expect_detached({"loss": [(weight * 2).sum().item()]})
    with pytest.raises(Wrong, match=r"the losses\[1\] still holds its autograd graph \(1 such tensors\)"):
        expect_detached([0.5, (weight * 2).sum()], name="the losses")


def test_the_chapters_own_calls_are_read_from_its_source_and_checked():
    from utils.checks import chapter_calls, expect_chapter_signature

    calls = chapter_calls("02_probing", "mlp_probe_accuracy_by_layer")
    assert calls and all(n == 4 for n, _ in calls)
    assert chapter_calls("02_probing", "no_such_function") == [] and chapter_calls("99_none", "f") == []

    def four_arguments(x_train, y_train, x_test, y_test, steps=300, lr=0.01, seed=0):
        return 0

    def three_arguments(x_train, y_train, x_test):
        return 0

    expect_chapter_signature(four_arguments, "02_probing", "mlp_probe_accuracy_by_layer")
    expect_chapter_signature(lambda *args, **kwargs: 0, "02_probing", "mlp_probe_accuracy_by_layer")
    with pytest.raises(Wrong, match=r"the chapter calls mlp_probe_accuracy_by_layer\(.*\) later, and your function "
                                    r"cannot be called that way"):
        expect_chapter_signature(three_arguments, "02_probing", "mlp_probe_accuracy_by_layer")


def test_an_answer_that_passes_the_check_but_not_the_chapters_call_is_wrong():
    """The check always passes `steps` and `hidden`; the chapter (02) calls the function with four
    arguments only, so an answer that makes them required passes the check's calls and would
    fail at the chapter's call three cells later."""
    def reference(x_train, y_train, x_test, y_test, steps=300, hidden=64):
        return 0

    exercise("9.1", "a test exercise", "02_probing", reference)(
        lambda candidate: expect_equal(call(candidate, 1, 2, 3, 4, steps=5, hidden=3), 0))
    reference.__name__ = "mlp_probe_accuracy_by_layer"

    def needs_steps_and_hidden(x_train, y_train, x_test, y_test, steps, hidden):
        return 0

    def keeps_the_signature(x_train, y_train, x_test, y_test, steps=100, hidden=64):
        return 0

    try:
        verdicts = [grade("9.1", answer) for answer in (reference, needs_steps_and_hidden, keeps_the_signature)]
    finally:
        del grade.__globals__["REGISTRY"]["9.1"]
    assert verdicts[0].passed and verdicts[2].passed, verdicts
    assert verdicts[1].status == "wrong" and "cannot be called that way" in verdicts[1].message, verdicts[1]


# ------------------------------------------------------------------------------------------
# Class 7: numbers that show the gap, and the nearest known mistake
# ------------------------------------------------------------------------------------------
def test_numbers_in_verdicts_show_a_gap_beyond_tolerance():
    with pytest.raises(Wrong, match=r"is 1.0012, expected 1.0001"):
        expect_close(1.0012, 1.0001, atol=1e-4)
    with pytest.raises(Wrong, match=r"got 1.00012, expected 1.00001"):
        expect_tensor(torch.tensor([1.00012]), torch.tensor([1.00001]), atol=1e-5, rtol=0)
    with pytest.raises(Wrong, match=r"is 0.5, expected 0.25"):  # no needless digits either
        expect_close(0.5, 0.25)


def test_a_near_variant_of_a_known_mistake_is_named_with_how_near():
    expected = torch.tensor([1.0, 2.0, 3.0])
    squared = torch.tensor([1.0, 4.0, 9.0])
    with pytest.raises(Wrong, match=r"^the result: nearest known mistake: squared it \(your answer is on average 0.01 "
                                    r"from that mistake's result and 2.677 from the correct one\); against the reference"):
        expect_tensor(squared + 0.01, expected, mistakes={"squared it": squared})
    with pytest.raises(Wrong) as far:  # as far from the mistake as from the reference: no hint
        expect_tensor(torch.tensor([1.0, 3.0, 6.0]), expected, mistakes={"squared it": squared})
    assert "squared it" not in str(far.value)
    with pytest.raises(Wrong, match=r"nearest known mistake: took the mean \(your answer is 0.0101 from"):
        expect_close(0.5101, 1.0, mistakes={"took the mean": 0.5})


def test_a_verdict_prints_as_one_line_and_wraps_only_between_words_in_a_notebook(monkeypatch, capsys):
    import IPython
    import IPython.display

    from utils.checks import show_verdict

    line = "Exercise 5.7 (x): wrong. " + "the value is 1.0012345, expected 1.0001234; " * 6
    show_verdict(line)  # no notebook: plain print
    assert capsys.readouterr().out == line + "\n"
    shown = []
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})
    monkeypatch.setattr(IPython, "get_ipython", lambda: ZMQInteractiveShell())
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw: shown.append(bundle))
    show_verdict(line + "<tag>")
    assert shown[0]["text/plain"] == line + "<tag>" and "\n" not in shown[0]["text/plain"]
    assert "word-break: normal" in shown[0]["text/html"] and "&lt;tag&gt;" in shown[0]["text/html"]
