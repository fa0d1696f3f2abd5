"""ModelRunner with the Pallas kernels against the reference, through the packed step inputs
and each attention hint variant (prefill-only, decode-only, mixed).

On an NVIDIA GPU this runs the compiled kernels in bf16 (on Hopper the prefill step is the
Mosaic kernel alone, fed the page table sliced from the packed buffer); elsewhere Pallas
interpret mode in fp32.
"""
from __future__ import annotations

import jax.numpy as jnp
import pytest
import numpy as np

from jaxsgl import kernels
from jaxsgl.engine.model_runner import ModelRunner
from jaxsgl.engine.sampling import SamplingFlags
from jaxsgl.engine.step_sampling import greedy_sampling_input
from jaxsgl.model.config import ModelConfig, RopeScaling
from jaxsgl.model.step_input import make_step_input
from jaxsgl.model.weights import random_weights, weight_specs

PAGE = 16
ON_GPU = kernels.on_nvidia_gpu()


def _run(cfg, weights, impl: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Greedy tokens and logprobs of a prefill step, a decode step and a mixed step."""
    runner = ModelRunner(cfg, weights, num_pages=24, page_size=PAGE, attn_impl=impl, max_seqs=4)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, cfg.vocab_size, 80).tolist(), rng.integers(0, cfg.vocab_size, 70).tolist()
    pa, pb = [3, 7, 1, 11, 5, 20], [9, 2, 14, 4, 6]
    out = []
    for seqs, T in (([(a, 0, pa), (b, 0, pb)], 160), ([(a[:1], 80, pa), (b[:1], 70, pb)], 4),
                    ([(a[1:6], 81, pa), (b[1:2], 71, pb)], 8)):
        # 64 pages per row, like the engine's (the whole context): a table that wide once reached
        # the Mosaic kernel as an unaligned view into the packed buffer (engine/packing.py ALIGN)
        step = make_step_input(seqs, PAGE, num_tokens=T, num_seqs=3, pages_per_seq=64)
        res = runner.run(step, greedy_sampling_input(3, T), SamplingFlags())
        out.append((res.token_ids[:2], res.logprobs[:2]))
    return out


def test_runner_kernels_match_reference_under_every_hint():
    hints = [kernels.step_hint(q, "pallas_interpret") for q in ([80, 70, 0], [1, 1, 0], [5, 1, 0])]
    assert hints == [kernels.PREFILL_HINT, kernels.DECODE_HINT, kernels.QLenHint()]
    dtype = jnp.bfloat16 if ON_GPU else jnp.float32
    cfg = ModelConfig(arch="llama", vocab_size=101, hidden_size=256, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=1, head_dim=128 if ON_GPU else 32, rms_norm_eps=1e-5,
                      rope_theta=10000.0, rope_scaling=RopeScaling(), max_position_embeddings=512,
                      tie_word_embeddings=True)
    weights = random_weights(weight_specs(cfg, dtype), seed=3, scale=0.3)  # peaky logits: no argmax ties
    got = _run(cfg, weights, "pallas" if ON_GPU else "pallas_interpret")
    want = _run(cfg, weights, "reference")
    for i, ((ids, lp), (ids_ref, lp_ref)) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(ids, ids_ref, err_msg=f"step {i}")
        np.testing.assert_allclose(lp, lp_ref, atol=0.05 if ON_GPU else 1e-4, err_msg=f"step {i}")


def _one_layer_config() -> ModelConfig:
    return ModelConfig(arch="llama", vocab_size=101, hidden_size=64, intermediate_size=64, num_layers=1,
                       num_heads=2, num_kv_heads=1, head_dim=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                       rope_scaling=RopeScaling(), max_position_embeddings=1024, tie_word_embeddings=True)


def test_a_narrow_page_table_is_padded_on_the_device_to_the_compiled_width():
    """ModelRunner(pages_per_seq=64) given a 16-column table (run and run_async) computes what the
    full 64-column table gives; a table wider than the compiled width is refused."""
    cfg = _one_layer_config()
    weights = random_weights(weight_specs(cfg, jnp.float32), seed=3, scale=0.3)
    seqs = [(list(range(5, 45)), 0, [3, 7, 1]), (list(range(9, 29)), 0, [9, 2])]
    results = []
    for width, runner_width in ((64, None), (16, 64)):
        runner = ModelRunner(cfg, weights, num_pages=24, page_size=PAGE, max_seqs=4, pages_per_seq=runner_width)
        step = make_step_input(seqs, PAGE, num_tokens=64, num_seqs=4, pages_per_seq=width)
        sync = runner.run(step, greedy_sampling_input(4, 64), SamplingFlags())
        src = np.full(64, -1, np.int32)
        overlapped = runner.collect(runner.run_async(step, greedy_sampling_input(4, 64), SamplingFlags(), None, src))
        results.append((sync.token_ids[:2], sync.logprobs[:2], overlapped.logprobs[:2]))
    for got, want in zip(results[1], results[0]):
        np.testing.assert_array_equal(got, want)
    from jaxsgl.engine.model_runner import _widen_page_table

    runner.warm_page_tables([1, 4, 8], [16, 32])  # warm-up: every (sequence bucket, width) compiled
    warmed = _widen_page_table._cache_size()
    for S in (1, 4, 8):
        for w in (16, 32):
            _widen_page_table(runner._host(np.zeros((S, w), np.int32)), width=64)  # as run_async sends it
    assert _widen_page_table._cache_size() == warmed  # nothing left to compile
    too_wide = make_step_input(seqs, PAGE, num_tokens=64, num_seqs=4, pages_per_seq=128)
    with pytest.raises(ValueError, match="pages_per_seq 64"):
        runner.run(too_wide, greedy_sampling_input(4, 64), SamplingFlags())


def test_run_async_sends_page_locked_inputs_and_computes_what_numpy_inputs_give():
    """run_async's inputs travel in page-locked host memory (copied to the device inside the step);
    the results equal those of numpy inputs (pinned_inputs=False, the way run() passes them)."""
    cfg = _one_layer_config()
    weights = random_weights(weight_specs(cfg, jnp.float32), seed=5, scale=0.3)
    seqs = [(list(range(5, 45)), 0, [3, 7, 1]), (list(range(9, 29)), 0, [9, 2])]
    results = []
    for pinned in (False, True):
        runner = ModelRunner(cfg, weights, num_pages=24, page_size=PAGE, max_seqs=4, pages_per_seq=64,
                             pinned_inputs=pinned)
        sent = runner._host(np.zeros(8, np.int32))
        assert isinstance(sent, np.ndarray) != pinned
        if pinned:
            assert sent.sharding.memory_kind == "pinned_host"
        prefill = make_step_input(seqs, PAGE, num_tokens=64, num_seqs=4, pages_per_seq=16)
        first = runner.run_async(prefill, greedy_sampling_input(4, 64), SamplingFlags(), None,
                                 np.full(64, -1, np.int32))
        decode = make_step_input([([0], 40, [3, 7, 1]), ([0], 20, [9, 2])], PAGE, num_tokens=8, num_seqs=4,
                                 pages_per_seq=16)
        src = np.array([0, 1, -1, -1, -1, -1, -1, -1], np.int32)  # the tokens the prefill sampled
        second = runner.run_async(decode, greedy_sampling_input(4, 8), SamplingFlags(), first, src)
        a, b = runner.collect(first), runner.collect(second)
        results.append((a.token_ids[:2], a.logprobs[:2], b.token_ids[:2], b.logprobs[:2]))
    for got, want in zip(results[1], results[0]):
        np.testing.assert_array_equal(got, want)
