"""The Mosaic GPU extend kernel against the plain-jnp reference.

On CPU it runs in Pallas' GPU interpret mode (simulated warpgroups, barriers and TMA,
with the race detector on), called on its own: the long-class rows must match the
reference and every other row must stay unwritten (the interpreter fills fresh memory
with NaN). On an H100/H200 the same mixes run compiled, through the full
ragged_paged_attention_pallas with a NaN-poisoned output buffer. KV slots past each
sequence's kv_len are NaN in both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl.kernels.paged_extend_mosaic import (TILE_TOKENS, MosaicConfig, on_hopper, paged_extend_mosaic,
                                                plan_tiles)
from jaxsgl.kernels.ragged_paged_attention import ragged_paged_attention_pallas
from jaxsgl.kernels.reference import ragged_paged_attention_ref
from jaxsgl.kernels.testing import make_batch

from test_attention import SEED, TOL, _run  # same directory (pytest prepends it)

ON_HOPPER = on_hopper()
Q_MIN = 9  # extends longer than a decode tile (16 rows / group 2)

# name: (T, H, KVH, D, page_size, pages_per_seq, config, (q_len, kv_len) per sequence)
CASES = {
    # multi-tile sequences, a tile whose second warpgroup has 2 rows, the short class
    # between them, a prefix ending mid-page, padding tokens after the last sequence
    "g2_d64_ps16_k64": (256, 4, 2, 64, 16, 16, MosaicConfig(block_k=64),
                        [(130, 200), (1, 211), (58, 70), (3, 40), (17, 17), (30, 245)]),
    # pages (128) longer than a KV block (64): slices of one page per block
    "g4_d128_ps128_k64": (128, 4, 1, 128, 128, 3, MosaicConfig(block_k=64, stages=3),
                          [(40, 300), (66, 66), (1, 2)]),
}


def _mosaic_only(batch, dtype, sm_scale, cfg):
    q, kp, vp, qs, kvl, pt = batch.args(dtype)
    T = q.shape[0]
    num_tiles = min(len(batch.kv_lens) + 1, T // Q_MIN) + T // TILE_TOKENS

    @jax.jit
    def run(q, kp, vp, qs, kvl, pt):
        plan = plan_tiles(qs, kvl, T, Q_MIN, num_tiles)
        return paged_extend_mosaic(plan, q, kp, vp, pt, sm_scale=sm_scale, cfg=cfg, interpret=True)
    return run(q, kp, vp, qs, kvl, pt), ragged_paged_attention_ref(q, kp, vp, qs, kvl, pt, sm_scale=sm_scale)


@pytest.mark.parametrize("name", list(CASES))
def test_mosaic_extend(name):
    T, H, KVH, D, ps, P, cfg, seqs = CASES[name]
    rng = np.random.default_rng([SEED, 200 + sorted(CASES).index(name)])
    batch = make_batch(rng, seqs, num_tokens=T, num_heads=H, num_kv_heads=KVH, head_dim=D,
                       page_size=ps, pages_per_seq=P)
    sm_scale = float(rng.uniform(0.05, 0.2))
    if ON_HOPPER:
        return _run(batch, jnp.bfloat16, sm_scale, long_config=cfg)
    out, ref = _mosaic_only(batch, jnp.bfloat16, sm_scale, cfg)
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    rel, atol = TOL[jnp.bfloat16]
    qs = batch.query_start
    for s, (q_len, kv_len) in enumerate(seqs):
        rows = slice(qs[s], qs[s + 1])
        if q_len < Q_MIN:
            assert np.isnan(out[rows]).all(), f"seq {s} (short class) was written"
            continue
        err = np.linalg.norm(out[rows] - ref[rows]) / np.linalg.norm(ref[rows])
        assert err < rel, f"seq {s} (q_len {q_len}, kv_len {kv_len}): rel err {err:.2e} (seed {SEED})"
        np.testing.assert_allclose(out[rows], ref[rows], atol=atol, rtol=atol, err_msg=f"seq {s}")
    np.testing.assert_array_equal(out[qs[-1]:], 0.0, err_msg="padding tokens must output zeros")


@pytest.mark.skipif(not ON_HOPPER, reason="compiled Mosaic GPU kernels need an H100/H200")
def test_mosaic_random_mixes_on_gpu():
    """Random ragged mixes through the default dispatch (Mosaic long class on Hopper)."""
    from jaxsgl.kernels.testing import random_mix
    rng = np.random.default_rng([SEED, 210])
    for D, ps, group in ((128, 16, 4), (64, 64, 2), (128, 32, 8)):
        for _ in range(4):
            T, S, P = 512, 6, 40
            seqs = random_mix(rng, T, S, P * ps)
            batch = make_batch(rng, seqs, num_tokens=T, num_heads=2 * group, num_kv_heads=2,
                               head_dim=D, page_size=ps, pages_per_seq=P, num_pages=S * P + 2)
            _run(batch, jnp.bfloat16, D ** -0.5)
    # a prefill batch (every sequence >= 64 new tokens): the Mosaic kernel alone
    seqs = [(64, 64), (200, 900), (130, 130), (100, 400)]  # 18 padding tokens are not written
    batch = make_batch(rng, seqs, num_tokens=512, num_heads=8, num_kv_heads=2, head_dim=128,
                       page_size=16, pages_per_seq=60)
    args = batch.args(jnp.bfloat16)
    out = ragged_paged_attention_pallas(*args, sm_scale=0.1, min_q_len=64)
    want = ragged_paged_attention_ref(*args, sm_scale=0.1)
    n = batch.query_start[-1]
    np.testing.assert_allclose(np.asarray(out[:n], np.float32), np.asarray(want[:n], np.float32),
                               atol=TOL[jnp.bfloat16][1], rtol=TOL[jnp.bfloat16][1])


def test_mosaic_rejects_what_it_cannot_run():
    rng = np.random.default_rng([SEED, 220])
    mk = lambda D, ps: make_batch(rng, [(20, 30)], num_tokens=24, num_heads=4, num_kv_heads=2,  # noqa: E731
                                  head_dim=D, page_size=ps, pages_per_seq=5)
    cases = [(mk(64, 16), jnp.float32, {}, "bf16/f16"), (mk(96, 16), jnp.bfloat16, {}, "head_dim 64 or 128"),
             (mk(64, 7), jnp.bfloat16, {}, "page size"),
             (mk(64, 16), jnp.bfloat16, {"soft_cap": 30.0}, "soft cap")]
    for batch, dtype, kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ragged_paged_attention_pallas(*batch.args(dtype), sm_scale=0.1, interpret=True,
                                          long_config=MosaicConfig(), **kw)
    with pytest.raises(ValueError, match="block_k"):
        ragged_paged_attention_pallas(*mk(64, 16).args(jnp.bfloat16), sm_scale=0.1, interpret=True,
                                      long_config=MosaicConfig(block_k=96))

