"""What a second start reuses: the tokenizer class AutoTokenizer picked (so no AutoConfig, no torch
import) and the compiled step itself (`persistent_jit`: no tracing, no lowering). Each check runs in
fresh processes, as a second `jaxsgl generate` would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXSGL_CACHE": str(cache), "TRANSFORMERS_VERBOSITY": "error"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


TOKENIZER = """
import json, random, sys
from jaxsgl.tokenizer import load_tokenizer
tok = load_tokenizer({dir!r})
r = random.Random(0)
texts = ["The capital of France is", "héllo  wörld\\n\\n", "<|im_start|>user hi<|im_end|>"]
texts += ["".join(r.choice("ab cdé\\n<|>中") for _ in range(40)) for _ in range(20)]
ids = [r.randrange(tok.vocab_size) for _ in range(300)]
chat = tok.apply_chat_template([{{"role": "user", "content": "hi"}}], tokenize=False, add_generation_prompt=True)
print(json.dumps({{"cls": type(tok).__name__, "torch": sys.modules.get("torch") is not None, "enc": [tok.encode(t) for t in texts],
                  "dec": [tok.decode(ids, skip_special_tokens=s) for s in (True, False)], "chat": chat,
                  "eos": tok.eos_token_id}}))
"""


def test_second_tokenizer_load_skips_autoconfig_and_gives_the_same_tokenizer(default_model_dir, tmp_path):
    code = TOKENIZER.format(dir=str(default_model_dir))
    first, second = _run(code, tmp_path), _run(code, tmp_path)
    assert list((tmp_path / "tokenizers").glob("*.json")), "the first load recorded no tokenizer class"
    assert not second["torch"], "the second load still went through AutoConfig (it imported torch)"
    assert {k: v for k, v in first.items() if k != "torch"} == {k: v for k, v in second.items() if k != "torch"}


STEP = """
import functools, json, logging
import jax, jax.numpy as jnp, numpy as np
from jaxsgl.model import compile_cache
compile_cache.enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
traced = []

def step(w, kv, x, *, n, scale):
    traced.append(1)
    h = x
    for i in range(n):
        h = jnp.tanh(h @ w) * scale + jnp.exp(-h)
    return h.sum(0), kv.at[0].add(h.sum(0))

f = compile_cache.persistent_jit(functools.partial(step, scale=0.5), donate_argnums=(1,), static_argnames=("n",))
w = jax.device_put(np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
kv = jax.device_put(np.zeros((4, 64), np.float32))
outs = []
for n in (3, 3, 5):
    out, kv = f(w, kv, np.full((8, 64), 0.01, np.float32), n=n)
    outs.append(np.asarray(out).tolist())
d = compile_cache.Path(jax.config.jax_compilation_cache_dir) / compile_cache.EXECUTABLES_DIR
print(json.dumps({"outs": outs, "kv": np.asarray(kv).tolist(), "traced": len(traced),
                  "entries": sorted(p.name for p in d.glob("*.pkl")) if d.exists() else []}))
"""


def test_persistent_jit_reuses_its_executables_in_a_new_process(tmp_path):
    first = _run(STEP, tmp_path)
    assert first["traced"] == 2 and len(first["entries"]) == 2  # one per shape variant, written after a fresh compile
    second = _run(STEP, tmp_path)
    assert second["traced"] == 0, "the second process traced the function again"
    assert second["outs"] == first["outs"] and second["kv"] == first["kv"]  # donation and results as before
    # An executable that JAX loaded from its own cache is not written (serializing it again loses code).
    for p in (tmp_path / "xla" / "jaxsgl-executables").glob("*.pkl"):
        p.unlink()
    third = _run(STEP, tmp_path)
    assert third["traced"] == 2 and third["entries"] == [] and third["outs"] == first["outs"]


LOWER = STEP.split("outs = []")[0] + """
import threading
compile_cache.unserializable_kernels = lambda lowered: lowered.as_text().count("tanh") == 5  # stands in for Mosaic
x = np.full((8, 64), 0.01, np.float32)
thunks, traced_by_lower = [], []
for n in (3, 5):
    before = len(traced)
    thunks.append(f.lower(w, kv, x, n=n))
    traced_by_lower.append(len(traced) - before)
for t in [threading.Thread(target=t) for t in thunks]:
    t.start(); t.join()
outs = []
for n in (3, 5):
    out, kv = f(w, kv, x, n=n)
    outs.append(np.asarray(out).tolist())
d = compile_cache.Path(jax.config.jax_compilation_cache_dir) / compile_cache.EXECUTABLES_DIR
print(json.dumps({"outs": outs, "traced_by_lower": traced_by_lower, "traced": len(traced),
                  "entries": len(list(d.glob("*.pkl"))) if d.exists() else 0}))
"""


def test_persistent_lower_traces_only_what_the_executable_cache_lacks(tmp_path):
    """Warm-up's path: lower() traces on the calling thread (in order) only an executable that is not on
    disk; one whose kernels cannot be serialized (Mosaic GPU on the GPU; here, by a stand-in predicate)
    is never written, so every start lowers it and loads it from JAX's cache."""
    first = _run(LOWER, tmp_path)
    assert first["traced_by_lower"] == [1, 1] and first["traced"] == 2 and first["entries"] == 1
    second = _run(LOWER, tmp_path)
    assert second["traced_by_lower"] == [0, 1] and second["traced"] == 1 and second["entries"] == 1
    assert second["outs"] == first["outs"]


def test_background_tokenizer_load_gives_the_same_tokenizer_and_reraises_its_error(default_model_dir, tmp_path):
    """Engine and EngineProcess load the tokenizer on a thread while weights load and steps compile."""
    import pytest

    from jaxsgl.tokenizer import load_tokenizer, load_tokenizer_in_background

    background = load_tokenizer_in_background(default_model_dir).result(timeout=300)
    direct = load_tokenizer(default_model_dir)
    text = "héllo <|im_start|> wörld 中"
    assert background.encode(text) == direct.encode(text) and background.eos_token_id == direct.eos_token_id
    with pytest.raises(Exception):
        load_tokenizer_in_background(tmp_path / "no-tokenizer-here").result(timeout=300)


def test_the_same_gguf_in_two_places_shares_one_conversion(tmp_path, monkeypatch):
    """A fresh clone's venv installs the default GGUF again (new path, new mtime): it must not convert
    again into another 500 MB directory. A different file (one byte of its tensors) gets its own."""
    from jaxsgl.model.gguf_convert import converted_dir

    monkeypatch.setenv("JAXSGL_CACHE", str(tmp_path / "cache"))
    data = bytes(range(256)) * (3 * 4096 + 7)
    a, b, c = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", tmp_path / "c" / "m.gguf"
    for path, payload in ((a, data), (b, data), (c, data[:-1] + b"\x00")):
        path.parent.mkdir()
        path.write_bytes(payload)
    os.utime(b, (1, 1))
    assert converted_dir(a) == converted_dir(b)
    assert converted_dir(c) != converted_dir(a)


def test_custom_call_targets_reads_the_printed_and_the_generic_mlir_forms():
    """The Mosaic check (unserializable_kernels) reads a lowered program's custom calls: session 14's matched
    only the generic form, while Lowered.as_text() prints `stablehlo.custom_call @target`, so the H200 wrote
    executables that then failed to load."""
    import jax
    import jax.numpy as jnp

    from jaxsgl.model import compile_cache

    printed = jax.jit(jnp.linalg.eigh).lower(jnp.eye(3)).as_text()  # a LAPACK custom call on the CPU
    assert any(t.startswith("lapack_") for t in compile_cache.custom_call_targets(printed))
    generic = '%0 = "stablehlo.custom_call"(%a) {call_target_name = "mosaic_gpu_v2", has_side_effect = true}'
    assert compile_cache.custom_call_targets(generic) == {"mosaic_gpu_v2"}
    assert compile_cache.custom_call_targets("stablehlo.custom_call @mosaic_gpu_v2(%a)") == {"mosaic_gpu_v2"}
    assert "mosaic_gpu_v2".startswith(compile_cache.NEEDS_RUNTIME_LIBRARY)


def test_mosaic_gpu_runtime_points_the_kernels_launcher_at_its_library(monkeypatch, tmp_path):
    """A loaded Mosaic GPU executable links its host launcher against $MOSAIC_GPU_RUNTIME_LIB_PATH, which jax
    sets only when jax.experimental.mosaic.gpu is imported (a loading process never does): mosaic_gpu_runtime
    sets it from the bindings' folder, keeps a user's value, and gives None where jaxlib has no Mosaic GPU."""
    import types

    from jaxsgl.model import compile_cache

    env = compile_cache.MOSAIC_GPU_RUNTIME_ENV
    monkeypatch.setenv(env, "/opt/mine/libmosaic_gpu_runtime.so")
    assert compile_cache.mosaic_gpu_runtime() == "/opt/mine/libmosaic_gpu_runtime.so"
    monkeypatch.delenv(env)
    ext = tmp_path / "_mosaic_gpu_ext.so"
    ext.write_bytes(b"")
    fake = types.ModuleType("jax._src.lib.mosaic_gpu")
    fake._mosaic_gpu_ext = types.SimpleNamespace(__file__=str(ext))
    monkeypatch.setitem(sys.modules, "jax._src.lib.mosaic_gpu", fake)
    assert compile_cache.mosaic_gpu_runtime() is None  # the bindings without their runtime library
    assert env not in os.environ
    (tmp_path / "libmosaic_gpu_runtime.so").write_bytes(b"")
    assert compile_cache.mosaic_gpu_runtime() == str(tmp_path / "libmosaic_gpu_runtime.so")
    assert os.environ[env] == str(tmp_path / "libmosaic_gpu_runtime.so")
    monkeypatch.delenv(env)
    monkeypatch.setitem(sys.modules, "jax._src.lib.mosaic_gpu", None)  # a CPU jaxlib: the import fails
    assert compile_cache.mosaic_gpu_runtime() is None


def test_mosaic_executables_are_written_only_where_their_runtime_library_is_found(monkeypatch):
    """On a GPU, a program calling a Mosaic GPU kernel is kept in the executable cache when
    mosaic_gpu_runtime finds the library its launcher links against on load, and not otherwise (it would
    fail to load in the next process and compile again); programs without one are always kept."""
    import types

    from jaxsgl.model import compile_cache

    mosaic = types.SimpleNamespace(as_text=lambda: 'stablehlo.custom_call @mosaic_gpu_v2(%arg0) {backend_config = ""}')
    plain = types.SimpleNamespace(as_text=lambda: "stablehlo.add %a, %b")
    monkeypatch.setattr(compile_cache.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(compile_cache, "mosaic_gpu_runtime", lambda: "/lib/libmosaic_gpu_runtime.so")
    assert not compile_cache.unserializable_kernels(mosaic) and not compile_cache.unserializable_kernels(plain)
    monkeypatch.setattr(compile_cache, "mosaic_gpu_runtime", lambda: None)
    assert compile_cache.unserializable_kernels(mosaic) and not compile_cache.unserializable_kernels(plain)
    monkeypatch.setattr(compile_cache.jax, "default_backend", lambda: "cpu")
    assert not compile_cache.unserializable_kernels(mosaic)  # no such kernels off the GPU


def test_the_executable_cache_is_on_for_cpu_and_gpu_unless_turned_off_on_the_gpu(monkeypatch):
    from jaxsgl.model import compile_cache

    env = compile_cache.GPU_EXECUTABLE_CACHE_ENV
    monkeypatch.delenv(env, raising=False)
    assert compile_cache.executable_cache_allowed("cpu") and compile_cache.executable_cache_allowed("gpu")
    assert not compile_cache.executable_cache_allowed("tpu")
    monkeypatch.setenv(env, "0")
    assert compile_cache.executable_cache_allowed("cpu") and not compile_cache.executable_cache_allowed("gpu")


def test_a_tracing_setting_in_the_environment_changes_the_executables_key(monkeypatch):
    """An executable traced under one JAXSGL_MATMUL_OUTPUT / JAXSGL_MIN_SPLIT_TOKENS must not load under
    another (session 18: three decode_step runs with different split settings loaded the first's);
    settings that change no program (progress bars, a notebook's fast mode) keep the key."""
    from jaxsgl.model import compile_cache

    for name in compile_cache.TRACED_ENV:
        monkeypatch.delenv(name, raising=False)
    base = compile_cache._environment_key()
    monkeypatch.setenv("JAXSGL_PROGRESS", "0")
    monkeypatch.setenv("JAXSGL_FAST", "1")
    assert compile_cache._environment_key() == base
    monkeypatch.setenv("JAXSGL_MIN_SPLIT_TOKENS", "128")
    split = compile_cache._environment_key()
    monkeypatch.setenv("JAXSGL_MATMUL_OUTPUT", "native")
    assert len({base, split, compile_cache._environment_key()}) == 3
    assert compile_cache.traced_environment() == [("JAXSGL_MATMUL_OUTPUT", "native"), ("JAXSGL_MIN_SPLIT_TOKENS", "128")]


def test_every_setting_the_traced_code_reads_is_in_the_executables_key():
    """The JAXSGL_* variables read by the code a step traces (the model's forward, the kernels) are all in
    compile_cache.TRACED_ENV."""
    import re
    from pathlib import Path

    from jaxsgl.model import compile_cache

    root = Path(compile_cache.__file__).resolve().parents[1]
    traced = [root / "model" / "forward.py", *sorted((root / "kernels").glob("*.py"))]
    read = {name for path in traced for name in re.findall(r"environ(?:\.get\(|\[)\s*[\"'](JAXSGL_\w+)", path.read_text())}
    assert read == set(compile_cache.TRACED_ENV)
