"""`python -m jaxsgl.launch_server` as a real process: every EngineOptions field is a flag, 503 while the
model loads, graceful SIGTERM with a request in flight, and two servers starting at once on a fresh cache."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import httpx
import pytest
from harness import free_port, launch, stop, wait_healthy

from jaxsgl.engine.options import EngineOptions
from jaxsgl.server.launch import build_parser, config_from_args, main


def test_every_engine_option_is_a_flag():
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for f in dataclasses.fields(EngineOptions):
        assert "--" + f.name.replace("_", "-") in flags, f.name
    args = parser.parse_args(["--model-path", "/m", "--port", "1234", "--max-running-requests", "8",
                              "--disable-radix-cache", "--no-enable-prefix-dedup", "--seq-buckets", "1", "4",
                              "--mem-fraction-static", "0.5", "--context-length", "256", "--log-requests"])
    cfg = config_from_args(args)
    assert cfg.model_path == "/m" and cfg.port == 1234 and cfg.log_requests
    opts = EngineOptions.from_kwargs(cfg.model_path, cfg.engine_options)
    assert opts.max_running_requests == 8 and opts.disable_radix_cache and not opts.enable_prefix_dedup
    assert opts.seq_buckets == [1, 4] and opts.mem_fraction_static == 0.5 and opts.context_length == 256
    assert EngineOptions.from_kwargs(None, config_from_args(parser.parse_args([])).engine_options) == EngineOptions()


def test_loading_503_generate_then_graceful_sigterm(tiny_model, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = launch(["--model-path", str(tiny_model), "--port", str(port), "--dtype", "float32",
                   "--max-total-tokens", "4096", "--log-requests"], log=tmp_path / "server.log")
    try:
        seen_503 = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.post(url + "/generate", json={"text": "hi"}, timeout=5)
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            if r.status_code != 503:
                break
            seen_503 = r.json()["error"]["message"]
            assert httpx.get(url + "/health", timeout=5).status_code in (200, 503)
            time.sleep(0.02)
        assert seen_503 is not None and "loading" in seen_503, "the port should open before the model is ready"
        wait_healthy(url, 120, proc)
        out = httpx.post(url + "/generate", json={"text": "Hello", "sampling_params": {"max_new_tokens": 4}},
                         timeout=60).json()
        assert out["meta_info"]["completion_tokens"] <= 4
        # a long stream in flight when SIGTERM arrives ends with finish_reason "abort" and [DONE]
        events: list = []
        body = {"text": "Tell me a story.", "stream": True,
                "sampling_params": {"max_new_tokens": 900, "temperature": 0, "ignore_eos": True}}

        def consume() -> None:
            with httpx.stream("POST", url + "/generate", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        events.append(line[5:].strip())

        t = threading.Thread(target=consume)
        t.start()
        while len(events) < 3 and t.is_alive():
            time.sleep(0.01)
        code = stop(proc, timeout=60)  # uvicorn re-raises SIGTERM after a clean shutdown: -15
        t.join(30)
        assert code in (0, -15), (tmp_path / "server.log").read_text()[-3000:]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["meta_info"]["finish_reason"]["type"] == "abort"
        log = (tmp_path / "server.log").read_text()
        assert "aborted 1 in-flight" in log and "POST /generate -> 200" in log
    finally:
        stop(proc)


def test_two_servers_start_at_once_on_a_fresh_cache(tmp_path):
    """Both convert the embedded GGUF into the same empty $JAXSGL_CACHE at the same time."""
    env = {"JAXSGL_CACHE": str(tmp_path / "cache")}
    ports = [free_port(), free_port()]
    procs = [launch(["--port", str(p), "--max-total-tokens", "2048"], env=env, log=tmp_path / f"s{i}.log")
             for i, p in enumerate(ports)]
    try:
        for i, (p, proc) in enumerate(zip(ports, procs)):
            try:
                wait_healthy(f"http://127.0.0.1:{p}", 300, proc)
            except (RuntimeError, TimeoutError) as e:
                raise AssertionError(f"server {i}: {e}\n{(tmp_path / f's{i}.log').read_text()[-3000:]}") from None
        for p in ports:
            assert httpx.get(f"http://127.0.0.1:{p}/v1/models", timeout=30).json()["data"][0]["id"] == "default"
    finally:
        for proc in procs:
            stop(proc)


def test_bad_option_values_fail_at_once_with_the_usage_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--grammar-backend", "xgrammar"])
    assert exc.value.code == 2
    assert "unknown grammar_backend 'xgrammar'; choices: outlines, llguidance" in capsys.readouterr().err


def test_gil_switch_interval_flag(capsys):
    parser = build_parser()
    assert parser.parse_args([]).gil_switch_interval is None  # Python's own (0.005 s)
    assert parser.parse_args(["--gil-switch-interval", "0.0005"]).gil_switch_interval == 0.0005
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--gil-switch-interval", bad])
    assert "must be > 0" in capsys.readouterr().err
