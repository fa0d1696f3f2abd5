"""Pallas ragged paged attention against the plain-jnp reference.

On CPU the kernel runs in Pallas interpret mode; on an NVIDIA GPU the same sweep
runs the compiled Triton kernel. Each shape compiles once and is checked on several
fresh random ragged mixes (the mix is data, not shape: the page pool size and the static
sm_scale are fixed per shape, so no mix recompiles). KV pages and slots past
kv_len are NaN and the output buffer starts NaN, so garbage reads and unwritten
rows fail the test.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl import kernels
from jaxsgl.kernels import BlockConfig
from jaxsgl.kernels.ragged_paged_attention import ragged_paged_attention_pallas
from jaxsgl.kernels.reference import ragged_paged_attention_ref, write_kv_ref
from jaxsgl.kernels.testing import make_batch, random_mix

ON_GPU = kernels.on_nvidia_gpu()
INTERPRET = not ON_GPU
# ||out - ref|| / ||ref|| per sequence, and elementwise atol (see device METHOD.md).
# Fresh random inputs every run; a failure prints the seed (rerun with KERNEL_TEST_SEED=...).
SEED = int(os.environ.get("KERNEL_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
TOL = {jnp.float32: (1e-5, 1e-4), jnp.bfloat16: (1.5e-2, 6e-2)}

# name: (T, S, H, KVH, D, page_size, pages_per_seq, dtype, extra kwargs)
SHAPES = {
    "g4_d64_ps16_bf16": (48, 6, 8, 2, 64, 16, 8, jnp.bfloat16, {}),
    "g1_d128_ps64_f32": (40, 4, 4, 4, 128, 64, 3, jnp.float32, {}),
    "g8_d128_ps16_bf16": (32, 5, 16, 2, 128, 16, 6, jnp.bfloat16, {}),
    "g3_d96_ps7_f32_cap_window": (36, 4, 6, 2, 96, 7, 12, jnp.float32,
                                  dict(soft_cap=5.0, sliding_window=24)),
    "g2_d64_ps1_bf16": (24, 3, 4, 2, 64, 1, 60, jnp.bfloat16, {}),
    "g4_d64_ps16_splits_window": (40, 5, 8, 2, 64, 16, 6, jnp.bfloat16, dict(
        sliding_window=33, short_config=BlockConfig(16, 16, 3), long_config=BlockConfig(32, 16, 2))),
    # SmolLM2's heads (9 q / 3 kv): a group that does not divide the 16-row tiles, with split partials
    "g3_d64_ps16_smollm2_splits": (30, 4, 9, 3, 64, 16, 6, jnp.bfloat16, dict(
        short_config=BlockConfig(16, 16, 3), long_config=BlockConfig(32, 16, 2))),
    "g16_d64_ps64_f32_splits": (20, 4, 16, 1, 64, 64, 3, jnp.float32, dict(
        short_config=BlockConfig(16, 32, 4), long_config=BlockConfig(32, 32, 2))),
    # the extend class's tuned shape: long tiles taken last-first, page-aligned KV blocks
    "g4_d128_ps16_long128_reverse": (96, 4, 8, 2, 128, 16, 10, jnp.bfloat16, dict(
        long_config=BlockConfig(128, 32, 1, 8, 3, reverse=True))),
    "g2_d64_ps16_overlap_splits": (64, 4, 4, 2, 64, 16, 8, jnp.bfloat16, dict(
        long_config=BlockConfig(32, 16, 2, reverse=True, overlap=True))),
}


def _check(out, ref, batch, dtype):
    print(f"KERNEL_TEST_SEED={SEED}")
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert not np.isnan(out).any(), f"NaN at rows {np.unique(np.nonzero(np.isnan(out))[0])}"
    rel, atol = TOL[dtype]
    qs = batch.query_start
    for s in range(len(batch.kv_lens)):
        a, b = qs[s], qs[s + 1]
        if b > a:
            err = np.linalg.norm(out[a:b] - ref[a:b]) / np.linalg.norm(ref[a:b])
            assert err < rel, f"seq {s} (q_len {b - a}, kv_len {batch.kv_lens[s]}): rel err {err:.2e}"
            np.testing.assert_allclose(out[a:b], ref[a:b], atol=atol, rtol=atol, err_msg=f"seq {s}")
    np.testing.assert_array_equal(out[qs[-1]:], 0.0, err_msg="padding tokens must output zeros")


def _run(batch, dtype, sm_scale, **kw):
    args = batch.args(dtype)
    ref = ragged_paged_attention_ref(*args, sm_scale=sm_scale, soft_cap=kw.get("soft_cap"),
                                     sliding_window=kw.get("sliding_window"))
    poison = jnp.full(args[0].shape, jnp.nan, dtype)
    out = ragged_paged_attention_pallas(*args, sm_scale=sm_scale, interpret=INTERPRET,
                                        out_init=poison, **kw)
    _check(out, ref, batch, dtype)


@pytest.mark.parametrize("name", list(SHAPES))
def test_ragged_mixes(name):
    T, S, H, KVH, D, ps, P, dtype, kw = SHAPES[name]
    rng = np.random.default_rng([SEED, sorted(SHAPES).index(name)])
    sm_scale = float(rng.uniform(0.05, 0.2))
    for _ in range(3):
        seqs = random_mix(rng, T, S, P * ps)
        batch = make_batch(rng, seqs, num_tokens=T, num_heads=H, num_kv_heads=KVH, head_dim=D,
                           page_size=ps, pages_per_seq=P, num_pages=S * P + 2)
        _run(batch, dtype, sm_scale, **kw)


def test_decode_long_context():
    """Pure decode with default configs, up to the longest context the page table holds."""
    rng = np.random.default_rng([SEED, 100 + 1])
    T = S = 4
    P, ps = 64, 16
    seqs = [(1, P * ps), (1, 1), (1, 517), (0, 0)]
    batch = make_batch(rng, seqs, num_tokens=T, num_heads=8, num_kv_heads=2, head_dim=128,
                       page_size=ps, pages_per_seq=P)
    _run(batch, jnp.bfloat16, 128 ** -0.5)


def _launches(args, **kw) -> int:
    """How many pallas_calls the dispatch traces for these inputs and hints."""
    f = functools.partial(ragged_paged_attention_pallas, sm_scale=0.125, interpret=True, **kw)
    return str(jax.make_jaxpr(f)(*args)).count("pallas_call[")


def test_decode_hint_launches_only_the_decode_class():
    """max_q_len=1 (a decode step) drops the extend class's launch; outputs are unchanged."""
    rng = np.random.default_rng([SEED, 100 + 5])
    seqs = [(1, 700), (1, 33), (1, 1), (1, 256), (1, 17), (1, 64), (1, 300), (0, 0)]
    batch = make_batch(rng, seqs, num_tokens=8, num_heads=8, num_kv_heads=2, head_dim=64,
                       page_size=16, pages_per_seq=48)
    _run(batch, jnp.bfloat16, 0.125, max_q_len=1)
    launches = functools.partial(_launches, batch.args(jnp.bfloat16))
    assert launches() == 2 and launches(max_q_len=1) == 1


def test_extend_hint_skips_the_decode_class():
    """min_q_len (every sequence is an extend of at least that many tokens) drops the decode
    class's launch; outputs, padding rows included here (11 padding tokens), are unchanged."""
    rng = np.random.default_rng([SEED, 100 + 6])
    seqs = [(20, 100), (9, 9), (40, 300), (0, 0)]
    batch = make_batch(rng, seqs, num_tokens=80, num_heads=4, num_kv_heads=2, head_dim=64,
                       page_size=16, pages_per_seq=20)
    _run(batch, jnp.bfloat16, 0.125, min_q_len=9)
    launches = functools.partial(_launches, batch.args(jnp.bfloat16))
    assert launches() == 2 and launches(min_q_len=9) == 1 and launches(min_q_len=100) == 1
    assert launches(min_q_len=2, max_q_len=8) == 1  # a range inside the decode class


def test_prefill_and_extend_multi_tile():
    """Sequences spanning several long-class tiles, with and without a cached prefix."""
    rng = np.random.default_rng([SEED, 100 + 2])
    seqs = [(70, 70), (45, 200), (1, 90)]
    batch = make_batch(rng, seqs, num_tokens=128, num_heads=4, num_kv_heads=2, head_dim=64,
                       page_size=16, pages_per_seq=13)
    _run(batch, jnp.bfloat16, 0.125, long_config=BlockConfig(32, 32, single_loop=True))


def test_all_padding():
    rng = np.random.default_rng([SEED, 100 + 3])
    batch = make_batch(rng, [(0, 0), (0, 0)], num_tokens=8, num_heads=4, num_kv_heads=2,
                       head_dim=64, page_size=16, pages_per_seq=2)
    out = ragged_paged_attention_pallas(*batch.args(jnp.float32), sm_scale=0.1, interpret=INTERPRET)
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_dispatch_and_errors():
    rng = np.random.default_rng([SEED, 100 + 4])
    batch = make_batch(rng, [(3, 10), (1, 5)], num_tokens=6, num_heads=4, num_kv_heads=2,
                       head_dim=64, page_size=16, pages_per_seq=1)
    args = batch.args(jnp.float32)
    auto = kernels.ragged_paged_attention(*args, sm_scale=0.1, impl="auto")
    ref = kernels.ragged_paged_attention(*args, sm_scale=0.1, impl="reference")
    np.testing.assert_allclose(np.asarray(auto)[:4], np.asarray(ref)[:4], atol=1e-4)
    with pytest.raises(ValueError, match="unknown attention impl"):
        kernels.ragged_paged_attention(*args, sm_scale=0.1, impl="flash")
    with pytest.raises(ValueError, match="unknown attention impl"):
        kernels.write_kv(args[1], args[2], args[0][:, :2], args[0][:, :2], jnp.zeros(6, jnp.int32),
                         impl="nope")
    if not ON_GPU:
        assert kernels.resolve_impl("auto") == "reference"
        with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
            kernels.ragged_paged_attention(*args, sm_scale=0.1, impl="pallas")
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ragged_paged_attention_pallas(args[0][:, :3], *args[1:], sm_scale=0.1, interpret=True)
    with pytest.raises(ValueError, match="powers of 2"):
        ragged_paged_attention_pallas(*args, sm_scale=0.1, interpret=True,
                                      short_config=BlockConfig(24, 16))


def test_jit_with_static_settings():
    """The model calls the dispatcher inside its own jit, settings keyword-only and static."""
    rng = np.random.default_rng([SEED, 100 + 5])
    batch = make_batch(rng, [(2, 9), (1, 30)], num_tokens=4, num_heads=4, num_kv_heads=1,
                       head_dim=64, page_size=16, pages_per_seq=2)
    impl = "pallas" if ON_GPU else "pallas_interpret"
    f = jax.jit(lambda *a: kernels.ragged_paged_attention(*a, sm_scale=0.125, soft_cap=30.0, impl=impl))
    args = batch.args(jnp.float32)
    ref = ragged_paged_attention_ref(*args, sm_scale=0.125, soft_cap=30.0)
    _check(f(*args), ref, batch, jnp.float32)


def test_write_kv_drops_padding():
    rng = np.random.default_rng([SEED, 100 + 6])
    kp = jnp.asarray(rng.standard_normal((4, 16, 2, 64)), jnp.bfloat16)
    vp = jnp.asarray(rng.standard_normal((4, 16, 2, 64)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((5, 2, 64)), jnp.bfloat16)
    slots = jnp.asarray([3, 17, -1, 63, -1], jnp.int32)
    k2, v2 = kernels.write_kv(kp, vp, k, k, slots, impl="auto")
    flat = np.asarray(k2, np.float32).reshape(64, 2, 64)
    for t, s in enumerate([3, 17, -1, 63, -1]):
        if s >= 0:
            np.testing.assert_array_equal(flat[s], np.asarray(k[t], np.float32))
    untouched = np.setdiff1d(np.arange(64), [3, 17, 63])
    np.testing.assert_array_equal(flat[untouched], np.asarray(kp, np.float32).reshape(64, 2, 64)[untouched])
    k3, _ = write_kv_ref(kp, vp, k, k, slots)
    np.testing.assert_array_equal(np.asarray(k2), np.asarray(k3))


def test_class_plans_cover_every_token_of_their_class():
    """The static tile bound (tile_bound) leaves no token of a class without a tile, for
    classes bounded above (as when the Mosaic class takes the long sequences) and not."""
    from jaxsgl.kernels.tile_plans import class_plan, tile_bound
    rng = np.random.default_rng([SEED, 100 + 6])
    for _ in range(15):
        T, S = int(rng.integers(16, 300)), int(rng.integers(1, 12))
        tile = int(rng.choice([4, 8, 16]))
        q_min = int(rng.integers(tile + 1, 3 * tile))
        q_max = int(rng.choice([q_min + int(rng.integers(0, 4 * tile)), 2**31 - 1]))
        cut = np.sort(rng.integers(0, T + 1, S))  # S sequences, the rest of T is padding
        qs = np.concatenate([[0], cut]).astype(np.int32)
        q_len = np.diff(np.concatenate([qs, [T]]))
        plan = np.asarray(class_plan(jnp.asarray(qs), jnp.asarray(np.maximum(q_len[:-1], 0) + 3, jnp.int32),
                                T, tile, q_min, q_max, tile_bound(T, S, tile, q_min, q_max)))
        covered = np.zeros(T, bool)
        for _, row0, nrows, _ in plan:
            assert not covered[row0:row0 + nrows].any(), "a token in two tiles"
            covered[row0:row0 + nrows] = True
        want = np.repeat((q_len >= q_min) & (q_len <= q_max), q_len)
        np.testing.assert_array_equal(covered, want, err_msg=f"T={T} S={S} tile={tile} {q_min}..{q_max}")
