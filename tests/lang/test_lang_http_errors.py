"""HTTP backends fail clearly and never hang: server down, HTTP 500, a timeout, an error inside a stream,
and run_batch keeps the programs that did not fail. A stub server on 127.0.0.1 (no model)."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import jaxsgl as sgl
from jaxsgl.lang import BackendError

MODEL_INFO = {"model_path": "stub-model", "tokenizer_path": "/nonexistent", "is_generation": True}


class Stub(BaseHTTPRequestHandler):
    """/get_model_info answers; /generate answers by the prompt: "fail" -> 500, "slow" -> sleeps,
    "stream" -> an in-band error after one chunk, otherwise "ok"."""

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/get_model_info":
            self._send(200, MODEL_INFO)
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = json.dumps(body)
        if "fail" in prompt:
            self._send(500, {"error": {"message": "engine exploded", "type": "internal_error"}})
        elif "slow" in prompt:
            time.sleep(3)
            self._send(200, {"text": "late", "meta_info": {}})
        elif body.get("stream"):
            chunk = b'data: {"text": "o", "meta_info": {}}\n\ndata: {"error": {"message": "stream broke"}}\n\n'
            self._send(200, chunk + b"data: [DONE]\n\n", "text/event-stream")
        elif self.path == "/v1/completions":
            self._send(200, {"id": "x", "object": "text_completion", "created": 0, "model": "stub",
                             "choices": [{"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        else:
            self._send(200, {"text": "ok", "output_ids": [1], "meta_info": {"finish_reason": {"type": "stop"}}})


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.handle_error = lambda *args: None  # a client that timed out closed its socket: expected
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@sgl.function
def prog(s, word):
    s += "Say " + word + ":" + sgl.gen("a", max_tokens=4)


def test_server_down_names_the_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=rf"RuntimeEndpoint\(http://127.0.0.1:{port}\): GET /get_model_info failed"):
        sgl.RuntimeEndpoint(f"http://127.0.0.1:{port}", timeout=5)
    assert time.monotonic() - t0 < 10


def test_http_500_and_timeout_name_backend_and_request(stub):
    ep = sgl.RuntimeEndpoint(stub, timeout=1)
    assert ep.get_chat_template() is None and ep.get_model_name() == "stub-model"
    assert prog.run(word="hi", backend=ep)["a"] == "ok"
    with pytest.warns(RuntimeWarning):
        err = prog.run(word="fail", backend=ep).error()
    assert isinstance(err, BackendError) and err.status == 500
    assert "POST /generate failed: HTTP 500: engine exploded" in str(err) and "text='Say fail:'" in str(err)
    t0 = time.monotonic()
    with pytest.warns(RuntimeWarning):
        err = prog.run(word="slow", backend=ep).error()
    assert isinstance(err, BackendError) and "timed out" in str(err) and time.monotonic() - t0 < 2.5


def test_stream_error_in_band(stub):
    ep = sgl.RuntimeEndpoint(stub, timeout=5)
    with pytest.warns(RuntimeWarning):
        st = prog.run(word="x", stream=True, backend=ep)
        pieces = list(st.text_iter("a"))
        assert pieces == ["o"] and "stream broke" in str(st.error())


def test_run_batch_reports_each_failure_and_keeps_the_rest(stub):
    ep = sgl.RuntimeEndpoint(stub, timeout=5)
    words = ["a", "fail", "b", "fail", "c"]
    with pytest.warns(RuntimeWarning, match=r"run_batch: 2 of 5 programs failed \(#1: BackendError.*#3: BackendError"):
        states = prog.run_batch([{"word": w} for w in words], backend=ep)
    assert [s.error() is None for s in states] == [w != "fail" for w in words]
    assert [s["a"] for s, w in zip(states, words) if w != "fail"] == ["ok"] * 3


def test_openai_backend_http_errors(stub):
    be = sgl.OpenAI("stub", base_url=stub + "/v1", is_chat_model=False, timeout=5)
    assert prog.run(word="hi", backend=be)["a"] == "ok" and be.token_usage.num_api_calls == 1
    with pytest.warns(RuntimeWarning):
        err = prog.run(word="fail", backend=be).error()
    assert isinstance(err, BackendError) and err.status == 500 and "OpenAI('stub'" in str(err)
    assert "prompt='Say fail:'" in str(err)
