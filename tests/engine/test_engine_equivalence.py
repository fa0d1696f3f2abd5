"""Greedy outputs are token-identical whatever the cache, page size, chunking or memory pressure."""
from __future__ import annotations

import pytest

from jaxsgl.engine.reference_generate import generate_ids
from jaxsgl.model.loader import load_model
from tests.engine.workload import CONFIGS, run


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "cache-on-page16-chunked"])
def test_greedy_outputs_identical_across_configs(name, tiny_model_dir, workload, baseline):
    outs, stats = run(tiny_model_dir, workload, **CONFIGS[name])
    assert outs == baseline[0]
    if name == "cache-off":
        assert stats["cached_prompt_tokens"] == 0
    if name == "heavy-eviction":
        assert stats["evicted_pages"] > 0


def test_cache_hits_on_shared_prefixes_and_matches_unbatched_reference(tiny_model_dir, workload, baseline):
    outs, stats = baseline
    assert stats["hit_rate"] > 0.3  # shared system prompts and repeats are served from the cache
    cfg, weights, _ = load_model(tiny_model_dir, dtype="float32")
    for i in range(0, len(workload), 27):  # a sample, against one-sequence-at-a-time generation
        ids, n = workload[i]
        assert outs[i] == generate_ids(cfg, weights, ids, n, ignore_eos=True)


def test_kernel_path_sends_narrow_page_tables_and_matches(tiny_model_dir, workload, baseline):
    """The kernels' single page-table width (the whole context: 64 pages here): each step sends only
    the columns in use and the runner pads them on the device; greedy outputs do not change."""
    from jaxsgl.engine.engine import Engine

    work = workload[:16]
    with Engine(str(tiny_model_dir), dtype="float32", debug_check_integrity=True, page_size=16,
                chunked_prefill_size=64, attention_backend="pallas_interpret") as eng:
        assert eng.builder.narrow_page_tables and eng.runner.pages_per_seq == 64
        outs = eng.generate(input_ids=[w[0] for w in work],
                            sampling_params=[{"max_new_tokens": w[1], "temperature": 0, "ignore_eos": True}
                                             for w in work])
        assert eng.scheduler.cache.locked_pages == 0
    from jaxsgl.engine.model_runner import _widen_page_table

    assert _widen_page_table._cache_size() >= 1  # the tables were narrower (<= 12 pages used of 64)
    assert [o["output_ids"] for o in outs] == baseline[0][:16]


def test_the_fused_kernels_keep_greedy_outputs(tiny_model_dir, workload, baseline, monkeypatch, tmp_path):
    """JAXSGL_FUSED_DECODE / JAXSGL_FUSED_ADD_NORM (opt-in kernels): the engine's decode steps run RoPE,
    the KV write and attention as one kernel, every residual add with its norm as another; greedy
    outputs do not change."""
    from jaxsgl.engine.engine import Engine
    from jaxsgl.kernels import add_norm, fused_decode
    from jaxsgl.model import compile_cache

    calls = {}
    for module, kernel, flag, env in ((fused_decode, "rope_write_attention_pallas", "FUSED_DECODE", "JAXSGL_FUSED_DECODE"),
                                      (add_norm, "add_rms_norm_pallas", "FUSED_ADD_NORM", "JAXSGL_FUSED_ADD_NORM")):
        def traced(*a, _kernel=getattr(module, kernel), _name=kernel, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _kernel(*a, **k)
        monkeypatch.setattr(module, kernel, traced)
        monkeypatch.setattr(module, flag, True)
        monkeypatch.setenv(env, "1")  # the executable cache's key: no unfused executable is loaded
    work = workload[:16]
    monkeypatch.setattr(compile_cache, "EXECUTABLES_DIR", str(tmp_path))  # (absolute) empty: every step traced
    with Engine(str(tiny_model_dir), dtype="float32", page_size=16, chunked_prefill_size=64,
                attention_backend="pallas_interpret") as eng:
        outs = eng.generate(input_ids=[w[0] for w in work],
                            sampling_params=[{"max_new_tokens": w[1], "temperature": 0, "ignore_eos": True}
                                             for w in work])
        assert eng.scheduler.cache.locked_pages == 0
    assert set(calls) == {"rope_write_attention_pallas", "add_rms_norm_pallas"}
    assert [o["output_ids"] for o in outs] == baseline[0][:16]


def test_deterministic_inference_keeps_greedy_outputs(tiny_model_dir, workload, baseline, monkeypatch, tmp_path):
    """--enable-deterministic-inference: every attention launch is batch-invariant, the steps compile
    with the deterministic XLA options, greedy outputs do not change (overlap on: rows change batches)."""
    from jaxsgl.engine.engine import Engine
    from jaxsgl.engine.model_runner import DETERMINISTIC_XLA_OPTIONS
    from jaxsgl import kernels
    from jaxsgl.model import compile_cache

    seen = set()

    def traced(*a, _kernel=kernels.ragged_paged_attention_pallas, **k):
        seen.add(k.get("batch_invariant"))
        return _kernel(*a, **k)
    monkeypatch.setattr(kernels, "ragged_paged_attention_pallas", traced)
    monkeypatch.setattr(compile_cache, "EXECUTABLES_DIR", str(tmp_path))  # (absolute) empty: every step traced
    work = workload[:16]
    with Engine(str(tiny_model_dir), dtype="float32", page_size=16, chunked_prefill_size=64,
                attention_backend="pallas_interpret", enable_deterministic_inference=True) as eng:
        outs = eng.generate(input_ids=[w[0] for w in work],
                            sampling_params=[{"max_new_tokens": w[1], "temperature": 0, "ignore_eos": True}
                                             for w in work])
        fns = list(eng.runner._fns.values()) + list(eng.runner._overlap_fns.values())
    assert seen == {True}
    assert fns and all(repr(sorted(dict(DETERMINISTIC_XLA_OPTIONS).items())) in f._fn_key for f in fns)
    assert [o["output_ids"] for o in outs] == baseline[0][:16]


def test_deterministic_inference_keeps_seeded_samples_across_schedules(tiny_model_dir, workload):
    """With the option, bf16: seeded samples (temperature 1) are the same with overlap and the radix cache on
    or off: the sampling keys come from a request's seed and token count, never from its row in a batch."""
    from jaxsgl.engine.engine import Engine

    work = workload[:12]
    params = [{"max_new_tokens": w[1], "temperature": 1.0, "seed": 1000 + i, "ignore_eos": True}
              for i, w in enumerate(work)]
    outs = []
    for sched in ({}, {"disable_overlap_schedule": True}, {"disable_radix_cache": True}):
        with Engine(str(tiny_model_dir), dtype="bfloat16", page_size=16, chunked_prefill_size=64,
                    enable_deterministic_inference=True, **sched) as eng:
            outs.append([o["output_ids"] for o in eng.generate(input_ids=[w[0] for w in work], sampling_params=params)])
            assert len(eng.builder.page_buckets) > 1  # the reference's narrow widths stay (kernels.INVARIANT_KV_TOKENS)
    assert outs[1] == outs[0] and outs[2] == outs[0]
    assert len({tuple(o) for o in outs[0]}) > 1
