"""Batch-invariant attention (`batch_invariant=True`, what --enable-deterministic-inference asks of the
kernels): a row's output is bit-identical whatever else shares its step and however many tokens its
sequence adds in it, where by default the decode class's split count (and so the order of its sums)
follows the padded batch, and a token's class (and kernel) follows its sequence's new-token count."""
from __future__ import annotations

import functools
import importlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl.kernels.ragged_paged_attention import ragged_paged_attention_pallas
from jaxsgl.kernels.testing import make_batch

configs = importlib.import_module("jaxsgl.kernels.block_configs")
H, KVH, D, PS, P = 8, 2, 64, 16, 16  # 256 tokens of page table: up to 16 splits at a floor of 16


def _configs(num_tokens: int, num_seqs: int, invariant: bool):
    return configs.default_configs(num_tokens, num_seqs, P, PS, H, KVH, D, jnp.bfloat16, invariant)


def test_invariant_is_one_unsplit_class_whatever_the_step(monkeypatch) -> None:
    monkeypatch.setattr(configs, "MIN_SPLIT_TOKENS", 16)
    shapes = {_configs(t, s, True) for t, s in [(1, 1), (8, 8), (64, 32), (256, 256), (512, 4)]}
    assert len(shapes) == 1
    (one, long), = shapes
    assert long is None and one.num_splits == 1
    # by default the split count follows the batch: 2 programs split 16 ways, 512 not at all
    assert [_configs(t, s, False)[0].num_splits for t, s in [(1, 1), (32, 32), (256, 256)]] == [16, 5, 1]


def _crowded_and_alone(kv_lens: list[int], seqs: int, others: int, alone_seqs: int):
    """One step of `seqs` decode slots (the first len(kv_lens) rows under test, `others` more sequences
    beside them), and the step of the same pages with the rows under test alone in `alone_seqs` slots."""
    rng = np.random.default_rng(0)
    lay = [(1, n) for n in kv_lens + rng.integers(1, P * PS + 1, others).tolist()]
    lay += [(0, 0)] * (seqs - len(lay))
    crowded = make_batch(rng, lay, num_tokens=seqs, num_heads=H, num_kv_heads=KVH, head_dim=D, page_size=PS,
                         pages_per_seq=P, poison=0.0)
    n = len(kv_lens)
    qs = np.concatenate([crowded.query_start[:n + 1], np.full(alone_seqs - n, n, np.int32)])
    alone = crowded._replace(q=crowded.q[:alone_seqs], query_start=qs.astype(np.int32),
                             kv_lens=np.concatenate([crowded.kv_lens[:n], np.zeros(alone_seqs - n, np.int32)]),
                             page_table=np.concatenate([crowded.page_table[:n],
                                                        np.zeros((alone_seqs - n, P), np.int32)]))
    return crowded, alone


def _rows(batch, n: int, invariant: bool) -> np.ndarray:
    out = ragged_paged_attention_pallas(*batch.args(jnp.float32), sm_scale=0.125, interpret=True, max_q_len=1,
                                        batch_invariant=invariant)
    return np.asarray(out)[:n]


@pytest.mark.parametrize("invariant", [True, False], ids=["invariant", "default"])
def test_a_row_sums_the_same_in_any_batch(monkeypatch, invariant: bool) -> None:
    monkeypatch.setattr(configs, "MIN_SPLIT_TOKENS", 16)
    kv_lens = [256, 177, 40]
    crowded_batch, alone_batch = _crowded_and_alone(kv_lens, 32, 20, 4)
    alone = _rows(alone_batch, 3, invariant)  # 8 programs: 16 splits by default
    crowded = _rows(crowded_batch, 3, invariant)  # 64 programs: 5 splits by default
    np.testing.assert_allclose(crowded, alone, rtol=1e-5, atol=1e-5)
    if invariant:
        np.testing.assert_array_equal(crowded, alone)
    else:  # what the setting is for: other split counts add the same terms in another order
        assert not np.array_equal(crowded, alone)


@pytest.mark.parametrize("invariant", [True, False], ids=["invariant", "default"])
@pytest.mark.parametrize("n", [1, 3, 23])
def test_a_prompt_row_sums_the_same_in_any_chunk(invariant: bool, n: int) -> None:
    """A sequence's last n tokens, as the tail of a 40-token prefill among others, and as an extend of n
    tokens after a cached prefix, alone in a smaller step (a cached prefix or a prefill chunk's boundary
    changes which class, and by default which kernel, a token's row is summed in)."""
    rng = np.random.default_rng(n)
    full = make_batch(rng, [(40, 40), (1, 200), (7, 90), (0, 0)], num_tokens=64, num_heads=H, num_kv_heads=KVH,
                      head_dim=D, page_size=PS, pages_per_seq=P, poison=0.0)
    T = 16
    tail = full._replace(q=np.concatenate([full.q[40 - n:40], full.q[:T - n]]),
                         query_start=np.array([0, n, n, n, n], np.int32),
                         kv_lens=np.array([40, 0, 0, 0], np.int32),
                         page_table=np.concatenate([full.page_table[:1], np.zeros((3, P), np.int32)]))
    run = functools.partial(ragged_paged_attention_pallas, sm_scale=0.125, interpret=True,
                            batch_invariant=invariant)
    want = np.asarray(run(*full.args(jnp.float32)))[40 - n:40]
    got = np.asarray(run(*tail.args(jnp.float32)))[:n]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if invariant:
        np.testing.assert_array_equal(got, want)
    elif n <= 4:  # the decode class (split, other KV blocks) against the extend class
        assert not np.array_equal(got, want)


@pytest.mark.parametrize("invariant", [True, False], ids=["invariant", "default"])
def test_the_reference_sums_a_row_the_same_at_any_page_table_width(invariant: bool) -> None:
    """The engine gives the reference several page-table widths, picked by the batch: under the option its
    softmax folds fixed KV blocks, so a wider table (blocks past every row's KV) changes no bit."""
    from jaxsgl import kernels

    rng = np.random.default_rng(3)
    narrow = make_batch(rng, [(1, 200), (5, 90), (30, 240), (0, 0)], num_tokens=40, num_heads=H, num_kv_heads=KVH,
                        head_dim=D, page_size=PS, pages_per_seq=P, poison=0.0)
    wide = narrow._replace(page_table=np.pad(narrow.page_table, [(0, 0), (0, 3 * P)]))
    run = functools.partial(kernels.ragged_paged_attention, sm_scale=0.125, impl="reference",
                            batch_invariant=invariant)
    a, b = np.asarray(run(*narrow.args(jnp.float32))), np.asarray(run(*wide.args(jnp.float32)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if invariant:
        np.testing.assert_array_equal(a, b)
    else:
        assert not np.array_equal(a, b)
