"""The disk memo make test shares between a chapter, its student twin and its tests (utils/memo.py):
off in a learner's session, a replay only for the same arguments, weights and mode, and never for a
call whose key could not be trusted."""

from __future__ import annotations

import os

import pytest
import torch

from utils import memo

CALLS: list[str] = []


@memo.memoized
def scaled_sum(x: torch.Tensor, scale: float = 2.0, progress: bool = True) -> torch.Tensor:
    CALLS.append("scaled_sum")
    return (x * scale).sum()


@memo.memoized
def model_output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    CALLS.append("model_output")
    with torch.no_grad():
        return model(x)


@memo.memoized
def noisy(x: torch.Tensor) -> torch.Tensor:
    CALLS.append("noisy")
    return x + torch.randn(x.shape)  # the global generator: a replay would leave it behind


@memo.memoized
def doubles_in_place(x: torch.Tensor) -> torch.Tensor:
    CALLS.append("doubles_in_place")
    x.mul_(2)
    return x.sum()


@memo.memoized
def applies(function, x: torch.Tensor) -> torch.Tensor:
    CALLS.append("applies")
    return function(x)


def _calls_of(name: str, action) -> int:
    before = CALLS.count(name)
    action()
    return CALLS.count(name) - before


def test_without_the_folder_every_call_runs(monkeypatch):
    monkeypatch.delenv(memo.MEMO_DIR_VARIABLE, raising=False)
    x = torch.arange(4.0)
    assert _calls_of("scaled_sum", lambda: [scaled_sum(x), scaled_sum(x)]) == 2


def test_the_same_arguments_are_replayed_and_other_arguments_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    x = torch.arange(4.0)
    assert _calls_of("scaled_sum", lambda: scaled_sum(x)) == 1
    replayed = []
    assert _calls_of("scaled_sum", lambda: replayed.append(scaled_sum(x, progress=False))) == 0  # progress is only shown
    assert replayed[0].item() == 12.0
    assert _calls_of("scaled_sum", lambda: scaled_sum(x, scale=3.0)) == 1
    assert _calls_of("scaled_sum", lambda: scaled_sum(x + 1)) == 1
    assert _calls_of("scaled_sum", lambda: scaled_sum(x.double())) == 1  # the dtype is part of the key
    assert "hit scaled_sum" in (tmp_path / memo.LOG_NAME).read_text()


def test_a_changed_weight_a_mode_or_a_hook_is_not_replayed(tmp_path, monkeypatch):
    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    torch.manual_seed(0)
    model, x = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.0)), torch.ones(1, 3)
    assert _calls_of("model_output", lambda: model_output(model, x)) == 1
    assert _calls_of("model_output", lambda: model_output(model, x)) == 0
    with torch.no_grad():
        model[0].weight[0, 0] += 1.0
    assert _calls_of("model_output", lambda: model_output(model, x)) == 1
    model.eval()
    assert _calls_of("model_output", lambda: model_output(model, x)) == 1
    handle = model[0].register_forward_hook(lambda module, inputs, output: output * 0)
    assert _calls_of("model_output", lambda: [model_output(model, x), model_output(model, x)]) == 2
    handle.remove()
    assert _calls_of("model_output", lambda: model_output(model, x)) == 0


def test_a_hooked_transformer_lens_model_is_not_replayed(tmp_path, monkeypatch):
    from utils import load_model

    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    model = load_model(verbose=False)
    tokens = torch.tensor([[0, 5, 6, 7]])
    assert _calls_of("model_output", lambda: [model_output(model, tokens), model_output(model, tokens)]) == 1
    model.add_hook("blocks.0.hook_resid_post", lambda resid, hook: resid * 0)
    try:
        assert _calls_of("model_output", lambda: model_output(model, tokens)) == 1
    finally:
        model.reset_hooks()
    assert "a model with hooks attached" in (tmp_path / memo.LOG_NAME).read_text()


def test_calls_that_draw_randomness_change_their_arguments_or_take_a_builtin_run_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    assert _calls_of("noisy", lambda: [noisy(torch.zeros(2)), noisy(torch.zeros(2))]) == 2
    assert _calls_of("doubles_in_place", lambda: [doubles_in_place(torch.ones(2)), doubles_in_place(torch.ones(2))]) == 2
    assert _calls_of("applies", lambda: [applies(torch.sin, torch.ones(2)), applies(torch.sin, torch.ones(2))]) == 2
    log = (tmp_path / memo.LOG_NAME).read_text()
    assert "global random generator" in log and "changed its arguments" in log and "bypass applies" in log


def test_a_python_function_argument_is_part_of_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    shift = torch.tensor(1.0)
    add, also_add = lambda x: x + shift, lambda x: x + shift
    twice = {"double": lambda x: x * 2, "triple": lambda x: x * 3}  # one line, two functions
    assert _calls_of("applies", lambda: [applies(add, torch.ones(2)), applies(also_add, torch.ones(2))]) == 1
    assert _calls_of("applies", lambda: [applies(twice["double"], torch.ones(2)), applies(twice["triple"], torch.ones(2))]) == 2
    shift += 1  # what a function closes over is part of it
    assert _calls_of("applies", lambda: applies(add, torch.ones(2))) == 1
    assert applies(twice["triple"], torch.ones(2)).tolist() == [3.0, 3.0]


def test_a_corrupted_entry_is_computed_again(tmp_path, monkeypatch):
    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    x = torch.arange(3.0)
    scaled_sum(x)
    for entry in tmp_path.glob("scaled_sum-*.pt"):
        entry.write_bytes(b"not a torch file")
    results = []
    assert _calls_of("scaled_sum", lambda: results.append(scaled_sum(x))) == 1
    assert results[0].item() == 6.0
    assert _calls_of("scaled_sum", lambda: scaled_sum(x)) == 0  # stored again, whole


def test_a_replayed_result_is_a_copy_the_caller_may_change(tmp_path, monkeypatch):
    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    model, x = torch.nn.Linear(2, 2), torch.ones(1, 2)
    first = model_output(model, x)
    replay = model_output(model, x)
    replay.mul_(0)
    assert torch.equal(model_output(model, x), first)


@memo.memoized
def probe_of(x: torch.Tensor):
    from utils.references.ch02_probing import LinearProbe

    CALLS.append("probe_of")
    with torch.random.fork_rng():  # the global generator is put back: the call may be stored
        torch.manual_seed(0)
        return LinearProbe(x)


def test_a_class_the_solution_notebook_defined_is_found_where_the_result_is_loaded(tmp_path, monkeypatch):
    """A notebook's classes pickle as `__main__.Name`; a test process has no such name in its own
    `__main__` and finds the exported reference's class instead, not an unreadable entry."""
    import sys

    from utils.references.ch02_probing import LinearProbe

    monkeypatch.setenv(memo.MEMO_DIR_VARIABLE, str(tmp_path))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    with monkeypatch.context() as notebook:  # as if LinearProbe had been defined in a notebook cell
        notebook.setattr(LinearProbe, "__module__", "__main__")
        notebook.setattr(sys.modules["__main__"], "LinearProbe", LinearProbe, raising=False)
        stored = probe_of(x)
    assert not hasattr(sys.modules["__main__"], "LinearProbe")
    loaded = []
    assert _calls_of("probe_of", lambda: loaded.append(probe_of(x))) == 0
    assert type(loaded[0]) is LinearProbe and torch.equal(loaded[0](x), stored(x))


def test_a_notebooks_copy_of_a_function_or_dataclass_digests_like_the_reference():
    """A chapter's functions and dataclasses exist twice, in the notebook (module __main__, a cell's
    file name) and in utils/references: arguments built from either share an entry. A comprehension
    inside a function is a code object whose repr holds an address: it is read by its contents."""
    source = ("import dataclasses\n"
              "@dataclasses.dataclass\nclass Family:\n    name: str\n    sources: object\n"
              "def make(n):\n    return Family('facts', lambda i: [i + k for k in range(n)])\n")
    copies = []
    for module, filename in (("__main__", "/tmp/ipykernel_1/2.py"), ("utils.references.ch99_x", "ch99_x.py")):
        namespace = {"__name__": module}
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own test source
        copies.append(namespace["make"](3))
    assert memo.digest(copies[0]) == memo.digest(copies[1])
    namespace = {"__name__": "__main__"}
    exec(compile(source.replace("i + k", "i - k"), "x.py", "exec", dont_inherit=True), namespace)  # noqa: S102
    assert memo.digest(namespace["make"](3)) != memo.digest(copies[0])  # other code, other entry
    assert memo.digest(copies[0]) != memo.digest(namespace["make"](4))  # another closure value too


def test_a_module_class_is_known_by_its_code_not_its_module():
    """The notebook's SparseAutoencoder and the reference's share entries; a learner's class of the
    same name whose forward differs does not share the reference's."""
    source = ("import torch\nclass Probe(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              "        self.w = torch.nn.Parameter(torch.ones(3))\n    def forward(self, x):\n        return x @ self.w\n")
    made = []
    for module, text in (("__main__", source), ("utils.references.ch99_x", source),
                         ("__main__", source.replace("x @ self.w", "x @ self.w.abs()"))):
        namespace = {"__name__": module}
        exec(compile(text, "cell.py", "exec", dont_inherit=True), namespace)  # noqa: S102 - our own test source
        made.append(namespace["Probe"]())
    assert memo.digest(made[0]) == memo.digest(made[1])
    assert memo.digest(made[0]) != memo.digest(made[2])


def test_a_lambda_written_in_a_loop_counts_the_global_it_reads():
    """`for chosen in ...: f(lambda a: g(chosen, a))` at a notebook's top level: `chosen` is a global,
    not a closure, and each turn of the loop is another function."""
    namespace = {"__name__": "__main__"}
    exec(compile("def g(c, a):\n    return c * a\nchosen = 1\nfirst = lambda a: g(chosen, a)\n", "cell.py", "exec",
                 dont_inherit=True), namespace)  # noqa: S102 - our own test source
    before = memo.digest(namespace["first"])
    namespace["chosen"] = 2
    assert memo.digest(namespace["first"]) != before
    namespace["chosen"] = object()  # a global the digest cannot read: the call runs unmemoized
    with pytest.raises(memo.Unreadable):
        memo.digest(namespace["first"])


def test_a_models_constants_defaults_properties_and_plain_attributes_are_part_of_it():
    base = ("import torch\nclass Encoder(torch.nn.Module):\n    SCALE = 2.0\n"
            "    def __init__(self, k=3):\n        super().__init__()\n        self.k = k\n"
            "        self.w = torch.nn.Parameter(torch.ones(3))\n"
            "    @property\n    def width(self):\n        return 3\n"
            "    @torch.no_grad()\n    def encode(self, x, threshold=0.0):\n        return (x * self.w).topk(self.k).values\n")
    variants = [base, base.replace("SCALE = 2.0", "SCALE = 3.0"), base.replace("return 3", "return 4"),
                base.replace("threshold=0.0", "threshold=0.5"), base.replace(".topk(self.k).values", ".relu()")]
    digests = []
    for text in variants:
        namespace = {"__name__": "__main__"}
        exec(compile(text, "cell.py", "exec", dont_inherit=True), namespace)  # noqa: S102 - our own test source
        digests.append(memo.digest(namespace["Encoder"]()))
    assert len(set(digests)) == len(variants), "two different encoders share a digest"
    namespace = {"__name__": "__main__"}
    exec(compile(base, "cell.py", "exec", dont_inherit=True), namespace)  # noqa: S102
    assert memo.digest(namespace["Encoder"](k=2)) != memo.digest(namespace["Encoder"](k=3))  # an instance attribute


def test_a_function_that_refers_to_itself_is_unreadable_not_a_crash():
    def countdown(n):
        return countdown(n - 1) if n else 0
    with pytest.raises(memo.Unreadable):
        memo.digest(countdown)


def test_the_organisms_digest_is_the_same_in_every_process_and_after_a_forward_pass():
    """A frozenset among a library class's constants prints in hash-seed order: the digest sorts it,
    so the solution notebook, the student notebook and each test worker agree on the model."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from utils.models import load_model; from utils import memo; import torch; m = load_model(verbose=False); "
            "before = memo.digest(m); m(torch.tensor([[1, 2, 3]])); m.run_with_cache(torch.tensor([[1, 2]])); "
            "assert memo.digest(m) == before, 'a forward pass changed the digest'; print(before)")
    found = set()
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr[-2000:]
        found.add(done.stdout.split()[-1])
    assert len(found) == 1, found


def test_a_dataclass_with_a_default_factory_is_readable():
    """PromptSet-like dataclasses (a field with default_factory) are arguments of most memoized calls."""
    import dataclasses

    @dataclasses.dataclass
    class Prompts:
        family: str
        labels: dict = dataclasses.field(default_factory=dict)

    assert memo.digest(Prompts("ioi")) == memo.digest(Prompts("ioi"))
    assert memo.digest(Prompts("ioi")) != memo.digest(Prompts("facts"))
    from utils.organism.world import prompt_set
    memo.digest(prompt_set("ioi", "test", n=4, seed=0))  # the real one: no Unreadable
