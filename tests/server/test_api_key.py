"""--api-key over real HTTP: without or with a wrong `Authorization: Bearer` a request gets 401 with OpenAI's
error JSON; the right key works for /generate and for the `openai` client; /health*, /metrics stay open
(SGLang's rule: srt/utils/auth.py)."""
from __future__ import annotations

import httpx
import openai
import pytest

from jaxsgl.server.app import authorized
from jaxsgl.server.launch import build_parser, config_from_args

KEY = "sk-test-0123456789"
BODY = {"text": "Paris is the capital of", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}


@pytest.fixture
def keyed(served):
    """The shared server with --api-key KEY for the duration of one test."""
    served.state.config.api_key = KEY
    try:
        yield served
    finally:
        served.state.config.api_key = None


def test_flag_sets_the_key():
    assert config_from_args(build_parser().parse_args(["--api-key", KEY])).api_key == KEY
    assert config_from_args(build_parser().parse_args([])).api_key is None


def test_auth_rule_follows_sglang():
    assert authorized("POST", "/generate", None, None)  # no key configured: open
    assert not authorized("POST", "/generate", None, KEY)
    assert not authorized("POST", "/generate", f"Bearer {KEY}x", KEY)
    assert not authorized("POST", "/generate", KEY, KEY)  # no scheme
    assert authorized("POST", "/generate", f"bearer {KEY}", KEY)  # the scheme is case-insensitive
    for path in ("/health", "/health_generate", "/metrics", "/ready"):
        assert authorized("GET", path, None, KEY), path
    assert authorized("OPTIONS", "/v1/completions", None, KEY)


def test_api_key_over_http(keyed):
    url = keyed.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path, body in (("POST", "/generate", BODY), ("GET", "/v1/models", None),
                                   ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
                                   ("GET", "/get_server_info", None), ("POST", "/flush_cache", None)):
            r = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.status_code)
            err = r.json()["error"]
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key", err
            assert "API key" in err["message"]
    # the probes and the scrape stay open
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    assert httpx.get(url + "/health_generate", timeout=60).status_code == 200
    assert "sglang:num_running_reqs" in httpx.get(url + "/metrics", timeout=30).text
    # the right key works: native API ...
    ok = {"Authorization": f"Bearer {KEY}"}
    ref = keyed.engine.generate(BODY["text"], BODY["sampling_params"])["text"]
    r = httpx.post(url + "/generate", json=BODY, headers=ok, timeout=60)
    assert r.status_code == 200 and r.json()["text"] == ref
    # ... and the openai client (which sends the key as a bearer token)
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, timeout=60, max_retries=0)
    out = client.completions.create(model="tiny", prompt=BODY["text"], max_tokens=4, temperature=0)
    assert out.choices[0].text == ref
    assert [m.id for m in client.models.list().data] == ["tiny"]
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", timeout=60, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
