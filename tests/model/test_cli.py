"""`jaxsgl generate` (the Engine) gives transformers' and the reference generator's greedy text, reuses
its compiled step for a new prompt length, `jaxsgl serve` forwards to the server, first starts convert
the default model safely in parallel, and progress bars stay off the logs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxsgl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)


def test_cli_greedy_text_matches_transformers(default_model_dir):
    import torch
    import transformers

    prompt = "Write one sentence about the sea."
    res = _cli("generate", "--model", str(default_model_dir), "--prompt", prompt, "--temperature", "0",
               "--ignore-eos", "--max-new-tokens", "16", "--chat", "--dtype", "float32")
    assert res.returncode == 0, res.stderr
    tok = transformers.AutoTokenizer.from_pretrained(str(default_model_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    model = transformers.AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=0)
    want = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert res.stdout == want + "\n"  # only the generated text on stdout


def _reference_text(default_model, prompt: str, chat: bool, max_new: int, ignore_eos: bool) -> str:
    from jaxsgl.engine.reference_generate import generate_ids
    from jaxsgl.tokenizer import chat_prompt_ids, eos_token_ids, load_tokenizer

    cfg, weights, model_dir = default_model
    tok = load_tokenizer(model_dir)
    ids = chat_prompt_ids(tok, [{"role": "user", "content": prompt}]) if chat else tok.encode(prompt)
    out = generate_ids(cfg, weights, ids, max_new, eos_ids=eos_token_ids(tok, cfg.eos_token_ids),
                       ignore_eos=ignore_eos)
    return tok.decode(out, skip_special_tokens=True)


def test_cli_matches_reference_generate_and_reuses_its_compiled_step(default_model, tmp_path):
    """Greedy text == reference_generate (stopping on eos, and with ignore_eos); a second command with
    another prompt length and max_new_tokens compiles nothing new (persistent cache under $JAXSGL_CACHE)."""
    model_dir = str(default_model[2])
    env = {**ENV, "JAXSGL_CACHE": str(tmp_path)}
    runs = [("What is the capital of France?", True, 24, False),
            ("The three primary colors are red, yellow and", False, 9, True)]
    compiled = []
    for prompt, chat, max_new, ignore_eos in runs:
        flags = ["--chat"] * chat + ["--ignore-eos"] * ignore_eos
        res = _cli("generate", "--model", model_dir, "--prompt", prompt, "--max-new-tokens", str(max_new), *flags,
                   env=env)
        assert res.returncode == 0, res.stderr
        assert res.stdout == _reference_text(default_model, prompt, chat, max_new, ignore_eos) + "\n"
        compiled.append(sorted(p.name for p in (tmp_path / "xla").glob("*") if p.is_file()))
    assert compiled[0], "the first command wrote no compiled step to the persistent cache"
    assert compiled[1] == compiled[0], "the second command compiled a new step variant"


def test_cli_reports_bad_model_path_clearly(tmp_path):
    res = _cli("generate", "--model", str(tmp_path / "nope"), "--prompt", "x", timeout=300)
    assert res.returncode == 2
    assert "neither an HF checkpoint directory nor a .gguf file" in res.stderr
    assert res.stdout == ""


def test_serve_forwards_its_arguments_to_the_server():
    import jaxsgl.server.launch  # noqa: F401  (the server is part of the package: it must import)
    res = _cli("serve", "--help", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "--model-path" in res.stdout  # launch_server's own options


def test_serve_without_the_server_fails_clearly(monkeypatch, capsys):
    from jaxsgl import cli

    monkeypatch.setitem(sys.modules, "jaxsgl.server.launch", None)  # as if the module were missing
    assert cli.main(["serve", "--port", "1"]) == 2
    assert "jaxsgl.server.launch" in capsys.readouterr().err


def test_two_first_starts_convert_the_default_model_concurrently(tmp_path):
    """Two processes converting the GGUF into one fresh cache both succeed (a lock + atomic rename)."""
    code = ("from jaxsgl.model.loader import load_model; from jaxsgl.model.resolve import resolve_model_dir; "
            "cfg, w, d = load_model(resolve_model_dir(None)); print(d)")
    env = {**ENV, "JAXSGL_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert outs[0][0] == outs[1][0]
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 2 and entries[1] == entries[0] + ".lock", entries  # no temporary directory left


def test_progress_bars_stay_off_unless_stderr_is_a_terminal(monkeypatch, capsys):
    from jaxsgl.progress import progress

    monkeypatch.delenv("JAXSGL_PROGRESS", raising=False)
    assert list(progress(range(3), desc="quiet")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # pytest's stderr is not a TTY
    monkeypatch.setenv("JAXSGL_PROGRESS", "1")
    assert list(progress(range(3), desc="forced")) == [0, 1, 2]
    assert "forced" in capsys.readouterr().err
