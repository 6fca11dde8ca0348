"""What a learner sees: attention views, verdicts, progress and tables (issue 31).

Cheap checks on the helpers' output, plus one real browser (headless Chromium, skipped where
there is none) that runs an attention view's script.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from utils import plotting

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _view_data(html: str) -> dict:
    """The JSON handed to the view's script."""
    return json.loads(re.search(r'\("wb-attention-[0-9a-f]+", (\{.*\})\);</script>$', html).group(1))


def _induction_like(n_heads: int = 8, seq_len: int = 20) -> tuple[list[str], torch.Tensor]:
    tokens = ["<|endoftext|>"] + [f" w{i}" for i in range(seq_len)] * 2
    n = len(tokens)
    scores = torch.randn(n_heads, n, n, generator=torch.Generator().manual_seed(0))
    causal = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    return tokens, torch.softmax(scores * 3 + causal, dim=-1)


def test_attention_view_opens_on_the_named_head_and_keeps_the_weights():
    tokens, pattern = _induction_like()
    names = [f"L3H{h}" for h in range(8)]
    data = _view_data(plotting.attention_patterns(tokens, pattern, names, focus="L3H3").data)
    assert data["focus"] == 3 and data["names"] == names and data["tokens"] == tokens
    assert data["query"] == len(tokens) - 1  # the last token's row is read out first
    weights = torch.frombuffer(bytearray(base64.b64decode(data["weights"])), dtype=torch.uint8)
    assert torch.allclose(weights.float().reshape(pattern.shape) / 255, pattern, atol=0.5 / 255 + 1e-6)
    assert _view_data(plotting.attention_patterns(tokens, pattern, names, focus=-1, query=None).data)["focus"] == 7
    with pytest.raises(ValueError, match="not one of the head names"):
        plotting.attention_patterns(tokens, pattern, names, focus="L0H3")
    with pytest.raises(ValueError, match="out of range"):
        plotting.attention_patterns(tokens, pattern, names, focus=8)


def test_attention_view_is_small_and_self_contained():
    """circuitsvis inlined its 1.4 MB bundle in every view; chapter 03 has three views."""
    tokens, pattern = _induction_like()
    html = plotting.attention_patterns(tokens, pattern, [f"L3H{h}" for h in range(8)]).data
    assert len(html.encode()) < 30_000, len(html.encode())
    assert "http" not in html and "overflow" not in html and "max-height" not in html
    weird = ["<|endoftext|>", "</script><b>", '"quoted"']
    html = plotting.attention_patterns(weird, torch.eye(3)[None]).data
    assert html.count("</script>") == 1 and _view_data(html)["tokens"] == weird


def test_every_attention_view_in_the_chapters_opens_on_a_head_its_text_names():
    for source in ("03_logit_lens.py",):
        text = (ROOT / "solutions" / source).read_text(encoding="utf-8")
        calls = [node for node in ast.walk(ast.parse(text))
                 if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "attention_patterns"]
        assert calls, source
        for call in calls:
            focus = {keyword.arg: keyword.value for keyword in call.keywords}.get("focus")
            assert isinstance(focus, ast.Constant), f"{source}:{call.lineno} opens on head 0"
            prose = "\n".join(line for line in text.splitlines() if line.startswith("#"))
            assert re.search(rf"\b{focus.value}\b", prose), f"{source}:{call.lineno}: the text never names {focus.value}"


def test_the_circuitsvis_view_opens_on_the_named_head_with_every_head_keeping_its_name():
    tokens, pattern = _induction_like(n_heads=4, seq_len=3)
    names = [f"L3H{h}" for h in range(4)]
    view = plotting.circuitsvis_attention(tokens, pattern, names, focus="L3H2")
    props = view.local_src.rsplit("CircuitsVis.render(", 1)[1]
    assert "CircuitsVis.AttentionHeads" in props  # circuitsvis's own component and bundle
    shown = json.loads(props[props.index("{"):props.rindex("}") + 1])
    assert shown["attentionHeadNames"] == ["L3H2", "L3H0", "L3H1", "L3H3"]
    assert torch.allclose(torch.tensor(shown["attention"])[0], pattern[2], atol=1e-6)
    with pytest.raises(ValueError, match="2 head names for 4 heads"):
        plotting.circuitsvis_attention(tokens, pattern, names[:2])


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here")
def test_attention_view_draws_in_a_real_browser(tmp_path):
    tokens, pattern = _induction_like(n_heads=2, seq_len=5)
    page = tmp_path / "view.html"
    page.write_text("<html><body style='width: 1000px'>"
                    + plotting.attention_patterns(tokens, pattern, ["L3H0", "L3H1"], focus="L3H1").data
                    + "</body></html>", encoding="utf-8")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=60).stdout
    assert dom.count("<canvas") == 3  # two thumbnails and the large head
    assert 'L3H1, from "' in dom and "needs JavaScript" not in dom  # the script ran and read out L3H1


# ------------------------------------------------------------------------------------------
# Verdicts
# ------------------------------------------------------------------------------------------
def _stripes(seq_len: int = 6):
    """Induction-score look-alikes: [layer, batch, head, dest, src] patterns, the correct scores,
    a planted mistake (the duplicate-token stripe) and a near variant of it (the same stripe, with
    one more destination, from the first copy, averaged in)."""
    n = 2 * seq_len + 1
    causal = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    patterns = torch.softmax(torch.randn(2, 2, 4, n, n, generator=torch.Generator().manual_seed(1)) * 2 + causal, -1)
    second = torch.arange(seq_len + 1, n)
    correct = patterns[..., second, second - seq_len + 1].mean(dim=(1, 3))
    planted = patterns[..., second, second - seq_len].mean(dim=(1, 3))
    variant = patterns.diagonal(offset=-seq_len, dim1=-2, dim2=-1).mean(dim=(1, 3))
    return correct, planted, variant


def test_a_near_variant_of_a_planted_mistake_is_named_first_with_how_near():
    from utils.checks import Verdict, Wrong, expect_tensor

    correct, planted, variant = _stripes()
    hint = "that is the earlier copy of the same token: the induction target is the token after it"
    with pytest.raises(Wrong) as caught:
        expect_tensor(variant, correct, "your scores", mistakes={hint: planted})
    message = str(caught.value)
    near = re.match(rf"your scores: nearest known mistake: {hint} \(your answer is on average ([0-9.e-]+) from that "
                    r"mistake's result and ([0-9.e-]+) from the correct one\)", message)
    assert near, message
    to_mistake, to_correct = map(float, near.groups())
    assert to_mistake == pytest.approx((variant - planted).abs().mean().item(), rel=1e-3)
    assert to_correct == pytest.approx((variant - correct).abs().mean().item(), rel=1e-3)
    # the name survives the cut of a long verdict to one line
    assert hint in str(Verdict("3.6", "induction scores", "wrong", message * 3))
    with pytest.raises(Wrong) as far:  # an answer no nearer the mistake than the answer: no name
        expect_tensor((correct + planted) / 2, correct, "your scores", mistakes={hint: planted})
    assert "nearest known mistake" not in str(far.value)


def test_verdict_numbers_read_without_nested_brackets_and_never_split():
    from utils.checks import Wrong, expect_tensor, show_verdict

    expected = torch.tensor([1.0, -2.0, 3.0])
    with pytest.raises(Wrong) as caught:
        expect_tensor(torch.relu(expected), expected, mistakes={"forgot the ReLU": torch.relu(expected)})
    assert str(caught.value) == "forgot the ReLU (differs by up to 2, at index [1]: got 0, expected -2)"
    # in a notebook a verdict is also an HTML block that wraps only at spaces (never inside 1.444)
    import IPython
    import IPython.display

    shown = []
    shell = type("ZMQInteractiveShell", (), {})
    original = IPython.get_ipython, IPython.display.display
    IPython.get_ipython, IPython.display.display = (lambda: shell()), (lambda bundle, raw: shown.append(bundle))
    try:
        show_verdict("wrong. got 1.444, expected 1.0 " * 20)
    finally:
        IPython.get_ipython, IPython.display.display = original
    style = re.search(r'style="([^"]*)"', shown[0]["text/html"]).group(1)
    assert "white-space: pre-wrap" in style and "word-break: normal" in style and "overflow-wrap: normal" in style


# ------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------
def test_sae_lens_bar_moves_every_few_steps_and_ends_at_100_percent(monkeypatch):
    """SAELens moves its bar every 100 steps: 150 steps ended at "67%". A stand-in for its trainer
    (the same bar calls as `sae_lens.training.sae_trainer.SAETrainer.fit`; importing SAELens takes
    seconds) runs inside the workbook's wrapper."""
    import contextlib
    import io
    import sys
    import types

    from tqdm import tqdm

    from utils.organism import sae

    class SAETrainer:
        def fit(self, steps: int = 150, batch: int = 1024):
            pbar = tqdm(total=steps * batch, desc="Training SAE")
            for self.n_training_steps in range(1, steps + 1):
                self._update_pbar(None, pbar)
            pbar.close()

        def _update_pbar(self, step_output, pbar, update_interval: int = 100):  # SAELens's own rule
            if self.n_training_steps % update_interval == 0:
                pbar.set_description(f"{self.n_training_steps}| loss")
                pbar.update(update_interval * 1024)

    fake = types.ModuleType("sae_lens.training.sae_trainer")
    fake.tqdm, fake.SAETrainer = tqdm, SAETrainer
    package = types.ModuleType("sae_lens.training")
    package.sae_trainer = fake
    monkeypatch.setitem(sys.modules, "sae_lens.training", package)
    monkeypatch.setitem(sys.modules, "sae_lens.training.sae_trainer", fake)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), sae._workbook_bar_for_sae_lens(True):
        fake.SAETrainer().fit()
    frames = [frame for frame in re.split(r"[\r\n]", err.getvalue()) if "%|" in frame]
    assert frames[-1].split("%|")[0].endswith("100"), frames[-3:]
    assert len({frame.split("|")[0] for frame in frames}) >= 10, frames  # 10|, 20|, ... 150|, not 100| alone


def test_the_behavioural_audit_reports_every_measurement(monkeypatch):
    from utils.organism import suite
    from utils.references import ch01_behavioral_tests as ch01

    monkeypatch.setattr(ch01, "logit_diff", lambda model, prompts: torch.ones(len(prompts.prompts)))
    from utils.memo import MEMO_DIR_VARIABLE

    monkeypatch.delenv(MEMO_DIR_VARIABLE, raising=False)  # every measurement made, none replayed (utils/memo.py)
    steps = []
    results = suite.behavioural_audit(None, on_step=lambda: steps.append(1))
    assert len(steps) == suite.audit_steps() >= 10  # fine enough to move: the bar had 3 steps, one per model
    assert set(results["families"]) == set(suite.FAMILIES)


def test_elapsed_bar_ends_as_text_with_the_time_taken(capsys):
    import time

    from utils.session import elapsed_bar

    with elapsed_bar("auditing"):
        time.sleep(1.3)
    shown = capsys.readouterr().err
    assert "auditing: running for 00:01" in shown and shown.rstrip().split("\r")[-1].startswith("auditing: done in 00:01")


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
TABLE_CHAPTERS = ("00_orientation", "01_behavioral_tests", "02_probing", "04_superposition", "08_audit")


def _fixed_widths(source: str) -> list[str]:
    """`print` calls whose f-strings pad a value to a fixed width ({name:<10}, {x:>9.1%}, {p!r:55}):
    hand-made table columns, which wrap into an unreadable block in a narrow output area."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
            for value in ast.walk(node):
                spec = getattr(value, "format_spec", None)
                text = "".join(part.value for part in getattr(spec, "values", []) if isinstance(part, ast.Constant))
                if re.match(r"^(.?[<>^=])?[+\- ]?z?#?0?[1-9]", text):
                    found.append(f"line {node.lineno}: {{...:{text}}}")
    return found


def test_the_rule_finds_a_hand_made_table():
    assert _fixed_widths('print(f"{name:<10} {acc:>9.1%} {d!r:55}")') == \
        ["line 1: {...:<10}", "line 1: {...:>9.1%}", "line 1: {...:55}"]
    assert _fixed_widths('print(f"accuracy {acc:.1%}, logit {x:+.2f}, big {n:,}")') == []


@pytest.mark.parametrize("chapter", TABLE_CHAPTERS)
def test_tables_are_dataframes_not_padded_prints(chapter):
    source = (ROOT / "solutions" / f"{chapter}.py").read_text(encoding="utf-8")
    assert not _fixed_widths(source), _fixed_widths(source)
