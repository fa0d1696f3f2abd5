"""SGLang's program semantics and the names jaxsgl adds for them, against FakeEngine (milliseconds)."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from fake_engine import FakeEngine, greedy_continuation

import jaxsgl as sgl
from jaxsgl.lang import RuntimeBackend
from jaxsgl.lang.backend.base import PromptContext
from jaxsgl.lang.reasoning import split_reasoning

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture
def backend():
    return RuntimeBackend(FakeEngine())


def test_frontend_does_not_import_jax():
    code = ("import sys, jaxsgl, jaxsgl.lang, jaxsgl.lang.backend.http, jaxsgl.lang.backend.openai_backend; "
            "import jaxsgl as sgl; sgl.RuntimeEndpoint, sgl.OpenAI; "
            "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib'))); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sglang_names_exist():
    for name in ("global_config", "RuntimeEndpoint", "OpenAI", "image", "video", "separate_reasoning", "Engine",
                 "Runtime", "function", "gen", "gen_int", "gen_string", "select", "system", "user", "assistant",
                 "system_begin", "user_end", "flush_cache", "get_server_info", "set_default_backend",
                 "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"):
        assert getattr(sgl, name) is not None, name
    assert sgl.global_config.enable_precache_with_tracing is True
    assert hasattr(sgl.lang.ProgramState, "text_async_iter")


def test_fork_item_iadd_extends_one_branch(backend):
    @sgl.function
    def prog(s):
        s += "Shared:"
        forks = s.fork(3)
        forks[1] += " one"  # SGLang's way to extend one branch
        forks += sgl.gen("x", max_tokens=3)
        forks.join()

    state = prog.run(temperature=0, backend=backend)
    assert state["x"] == [greedy_continuation("Shared:" + t, 3) for t in ("", " one", "")]
    forks = prog.run(temperature=0, backend=backend)  # replacing a branch is refused
    group = sgl.lang.ProgramStateGroup(forks.fork(2).states, forks)
    with pytest.raises(TypeError, match="replace a branch"):
        group[0] = group[1]


def test_failed_var_scope_never_returns_an_int(backend):
    @sgl.function
    def prog(s):
        with s.var_scope("part"):
            s += "<<FAIL>>" + sgl.gen("a", max_tokens=2)

    with pytest.warns(RuntimeWarning):
        state = prog.run(backend=backend)
        assert isinstance(state.error(), RuntimeError)
    with pytest.raises(KeyError):
        state["part"]

    @sgl.function
    def ok(s):
        s += "a "
        with s.var_scope("part"):
            s += "bc" + sgl.gen("g", max_tokens=2)
    assert ok.run(temperature=0, backend=backend)["part"] == "bc" + greedy_continuation("a bc", 2)


def test_image_on_a_text_only_model_is_a_clear_error(backend):
    @sgl.function
    def prog(s):
        s += sgl.user(sgl.image(PNG) + "What is in the picture?")
        s += sgl.assistant(sgl.gen("a", max_tokens=2))

    with pytest.warns(RuntimeWarning):
        state = prog.run(backend=backend)
        err = state.error()
    assert isinstance(err, ValueError) and "no vision input" in str(err) and "RuntimeBackend" in str(err)
    with pytest.raises(KeyError):  # never dropped silently: the gen did not run
        state["a"]


class VisionBackend(RuntimeBackend):
    supports_vision = True

    def __init__(self, engine):
        super().__init__(engine)
        self.contexts: list[PromptContext] = []

    def generate(self, prompt, sampling_params, context=None):
        self.contexts.append(context)
        return "ok", {}


def test_image_and_video_build_openai_message_parts(tmp_path):
    be = VisionBackend(FakeEngine())
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")

    @sgl.function
    def prog(s):
        s += sgl.user(sgl.image(PNG) + "Describe." + sgl.video(str(video), num_frames=4))
        s += sgl.assistant(sgl.gen("a", max_tokens=2))

    state = prog.run(backend=be)
    assert state.error() is None and state["a"] == "ok"
    user = state.messages()[0]
    assert user["role"] == "user" and user["content"][0] == {"type": "text", "text": "Describe."}
    assert user["content"][1]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert user["content"][2]["type"] == "video_url" and user["content"][2]["video_url"]["num_frames"] == 4
    assert user["content"][2]["video_url"]["url"].startswith("data:video/mp4;base64,")
    ctx = be.contexts[0]
    assert ctx.role == "assistant" and ctx.at_role_start and len(ctx.images) == 2 and ctx.messages == [user]
    with pytest.raises(ValueError, match="num_frames"):
        sgl.lang.multimodal.video_part(str(video), 0)


@pytest.mark.parametrize("text,model_type,want", [
    ("<think>add 2 and 2</think>\n\nIt is 4.", "qwen3", ("add 2 and 2", "It is 4.")),
    ("It is 4.", "qwen3", ("", "It is 4.")),
    ("add 2 and 2</think>It is 4.", "deepseek-r1", ("add 2 and 2", "It is 4.")),
    ("<think>still thinking", "think", ("still thinking", "")),
    ("\u25c1think\u25b7hmm\u25c1/think\u25b7Yes.", "kimi", ("hmm", "Yes.")),
])
def test_split_reasoning_by_think_tags(text, model_type, want):
    assert tuple(split_reasoning(text, model_type)) == want


def test_separate_reasoning_splits_the_variable_and_the_text():
    class ThinkingBackend(RuntimeBackend):
        def generate(self, prompt, sampling_params, context=None):
            return "<think>The sky scatters blue light.</think>\nBlue.", {"finish_reason": {"type": "stop"}}

    be = ThinkingBackend(FakeEngine())

    @sgl.function
    def prog(s):
        s += sgl.user("What color is the sky?")
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer", max_tokens=32), model_type="qwen3"))
        s += sgl.user("Why?")

    state = prog.run(backend=be)
    assert state.error() is None
    assert state["answer"] == "Blue." and state["answer_reasoning_content"] == "The sky scatters blue light."
    assert state.messages()[1] == {"role": "assistant", "content": "Blue."} and "<think>" not in state.text()


def test_text_async_iter_streams_with_logprobs():
    eng = FakeEngine(step_delay=0.002)
    be = RuntimeBackend(eng)

    @sgl.function
    def prog(s):
        s += "Story:" + sgl.gen("story", max_tokens=10, return_logprob=True)

    ref = prog.run(temperature=0, backend=be)

    async def collect():
        st = prog.run(temperature=0, stream=True, backend=be)
        pieces = [p async for p in st.text_async_iter("story", return_meta_data=True)]
        whole = [p async for p in prog.run(temperature=0, stream=True, backend=be).text_async_iter()]
        return pieces, whole

    pieces, whole = asyncio.run(asyncio.wait_for(collect(), 30))
    assert "".join(p for p, _ in pieces) == ref["story"] and "".join(whole) == ref.text()
    last_meta = pieces[-1][1]
    assert [e[1] for e in last_meta["output_token_logprobs"]] == [ord(c) for c in ref["story"]]

    async def non_stream():
        return [p async for p in ref.text_async_iter("story", return_meta_data=True)]
    (text, meta), = asyncio.run(non_stream())
    assert text == ref["story"] and len(meta["output_token_logprobs"]) == 10


def test_backend_names_token_usage_and_endpoint(backend):
    assert backend.endpoint is backend and backend.get_model_name() == "FakeEngine"
    assert backend.token_usage.snapshot() == {"num_api_calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    backend.token_usage.add(5, 2)
    assert (backend.token_usage.prompt_tokens, backend.token_usage.num_api_calls) == (5, 1)
    backend.token_usage.reset()
    assert backend.token_usage.completion_tokens == 0


def test_spec_tokens_are_ignored_by_engine_backends(backend):
    @sgl.function(num_api_spec_tokens=32)
    def prog(s):
        s += "A:" + sgl.gen("a", max_tokens=4, stop="\n") + "\nB:" + sgl.gen("b", max_tokens=4)

    state = prog.run(temperature=0, backend=backend)
    assert state["a"] == greedy_continuation("A:", 4).split("\n")[0]


def test_run_batch_generator_style(backend):
    @sgl.function
    def prog(s, w):
        s += w + sgl.gen("a", max_tokens=3)

    it = prog.run_batch([{"w": w} for w in ("ab", "cd", "e ")], generator_style=True, temperature=0, backend=backend)
    assert not isinstance(it, list)
    assert [s["a"] for s in it] == [greedy_continuation(w, 3) for w in ("ab", "cd", "e ")]
