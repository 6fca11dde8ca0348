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
