"""Test helpers: a real server on 127.0.0.1 (in-process uvicorn thread, or a subprocess), tiny models."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from jaxsgl.server.app import create_app
from jaxsgl.server.state import ServerConfig, ServerState

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
ENGINE_OPTS = dict(dtype="float32", debug_check_integrity=True, chunked_prefill_size=64, max_total_tokens=8192,
                   context_length=512)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_model(out: Path, tokenizer_dir: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's vocabulary, tokenizer and chat template; peaky logits, so greedy
    text does not depend on batch composition."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.2,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).exists():
            shutil.copy(tokenizer_dir / f, out / f)
    return out


class InProcessServer:
    """uvicorn on a thread of this process over an Engine the test also holds (for integrity checks)."""

    def __init__(self, engine: Any, **config: Any) -> None:
        self.engine = engine
        self.port = free_port()
        self.state = ServerState(ServerConfig(host="127.0.0.1", port=self.port, **config))
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(self.state)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   timeout_graceful_shutdown=10, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 60) -> "InProcessServer":
        self.thread.start()
        self.state.load(lambda: self.engine)
        wait_healthy(self.url, timeout)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Poll GET /health until 200; returns the seconds it took (raises on timeout or a dead process)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def launch(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """`python -m jaxsgl.launch_server ARGS` as a subprocess (stdout+stderr to log)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen([PYTHON, "-m", "jaxsgl.launch_server", *args], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM, wait (SIGKILL after timeout); returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def wait_idle(engine: Any, timeout: float = 30) -> None:
    """Until no request runs or waits (raises TimeoutError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = engine.get_load()
        if load["num_running_reqs"] == 0 and load["num_queue_reqs"] == 0:
            return
        time.sleep(0.05)
    raise TimeoutError(f"engine still busy: {engine.get_load()}")


def assert_no_leaked_pages(engine: Any, timeout: float = 30) -> None:
    """Idle, integrity holds, and after a flush every KV page is free again."""
    wait_idle(engine, timeout)
    engine.scheduler.check_integrity()
    engine.flush_cache()
    pool = engine.scheduler.pool
    deadline = time.monotonic() + timeout
    while pool.num_free != pool.capacity and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.scheduler.check_integrity()
    assert pool.num_free == pool.capacity, f"{pool.capacity - pool.num_free} pages leaked"
