"""`jaxsgl generate` on an HF directory gives transformers' greedy text."""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import transformers


def test_cli_greedy_text_matches_transformers(default_model_dir):
    prompt = "Write one sentence about the sea."
    cmd = [sys.executable, "-m", "jaxsgl.cli", "generate", "--model", str(default_model_dir), "--prompt", prompt,
           "--temperature", "0", "--ignore-eos", "--max-new-tokens", "16", "--chat", "--dtype", "float32"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})
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


def test_cli_reports_bad_model_path_clearly(tmp_path):
    res = subprocess.run([sys.executable, "-m", "jaxsgl.cli", "generate", "--model", str(tmp_path / "nope"),
                          "--prompt", "x"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 2
    assert "neither an HF checkpoint directory nor a .gguf file" in res.stderr
    assert res.stdout == ""
