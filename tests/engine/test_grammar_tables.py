"""The pooled device grammar tables (compressed transitions, shared mask rows) against the host automata."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl.constrained import ConstraintSpec, TokenVocab, compile_constraint
from jaxsgl.constrained.table_pool import AutomatonPool, PoolFull, RangeAllocator, compress
from jaxsgl.engine.grammar_tables import allowed_tokens, apply_upload, init_tables, next_states


@pytest.fixture(scope="module")
def vocab(default_model_dir):
    from jaxsgl.tokenizer import load_tokenizer
    tok = load_tokenizer(default_model_dir)
    return TokenVocab.from_tokenizer(tok, 49152, [tok.eos_token_id])


SPECS = [ConstraintSpec("regex", r"(yes|no|maybe)[0-9]{1,3}"),
         ConstraintSpec("json_schema", '{"type":"object","properties":{"name":{"type":"string"},'
                        '"age":{"type":"integer"}},"required":["name","age"]}'),
         ConstraintSpec("regex", r"[a-z]+@[a-z]+\.(com|org)")]


def test_range_allocator_first_fit_and_merge():
    a = RangeAllocator(10)
    assert a.alloc(4) == 0 and a.alloc(4) == 4 and a.alloc(4) is None
    a.free(0, 4)
    assert a.alloc(3) == 0 and a.alloc(1) == 3
    a.free(0, 3); a.free(3, 1); a.free(4, 4)
    assert a.num_free == 10 and a.alloc(10) == 0


def test_device_tables_agree_with_the_host_automata(vocab):
    fsms = [compile_constraint(s, vocab) for s in SPECS]
    W = fsms[0].mask.shape[1]
    pool = AutomatonPool(max_states=4096, max_mask_rows=512, max_exceptions=1 << 16, words=W)
    tables = init_tables(4096, 512, 1 << 16, W)
    places = []
    for spec, fsm in zip(SPECS, fsms):
        c = compress(fsm)
        assert c.exc_token.size <= fsm.num_transitions
        p, up = pool.acquire(spec, fsm)
        tables = apply_upload(tables, up)
        places.append(p)
    pool.check_integrity()
    rng = np.random.default_rng(0)
    rows_state, rows_tok, want_next, want_allowed = [], [], [], []
    for fsm, p in zip(fsms, places):
        for s in rng.choice(fsm.num_states, min(fsm.num_states, 12), replace=False):
            allowed = fsm.allowed_tokens(int(s))
            non_eos = [t for t in allowed if t not in fsm.eos_ids]
            if not non_eos:
                continue
            t = int(rng.choice(non_eos))
            rows_state.append(p.state_base + int(s)); rows_tok.append(t)
            want_next.append(p.state_base + fsm.next_state(int(s), t))
            want_allowed.append(allowed)
    state = jnp.asarray(rows_state + [-1], jnp.int32)
    got_allowed = np.asarray(allowed_tokens(tables, state, 49152))
    got_next = np.asarray(next_states(tables, state, jnp.asarray(rows_tok + [5], jnp.int32), 49152))
    for i, want in enumerate(want_allowed):
        assert np.array_equal(np.flatnonzero(got_allowed[i]), want)
    assert got_allowed[-1].all() and got_next[-1] == -1
    assert got_next[:-1].tolist() == want_next


def test_pool_pins_shares_and_evicts(vocab):
    fsms = [compile_constraint(s, vocab) for s in SPECS[:2]]
    W = fsms[0].mask.shape[1]
    need = max(f.num_states for f in fsms)
    pool = AutomatonPool(max_states=need + 1, max_mask_rows=256, max_exceptions=1 << 16, words=W)
    p0, up0 = pool.acquire("a", fsms[0])
    again, up = pool.acquire("a", fsms[0])
    assert again is p0 and up is None and p0.refs == 2
    if fsms[0].num_states + fsms[1].num_states > need + 1:
        with pytest.raises(PoolFull):
            pool.acquire("b", fsms[1])  # "a" is pinned
    pool.release("a"); pool.release("a")
    p1, up1 = pool.acquire("b", fsms[1])  # evicts the unpinned "a"
    assert "a" not in pool.resident and up1 is not None
    pool.release("b")
    pool.check_integrity()


def test_compress_dedups_mask_rows_and_is_computed_once(vocab):
    from jaxsgl.constrained.table_pool import compressed

    fsm = compile_constraint(SPECS[1], vocab)
    c = compressed(fsm)
    # every state's mask is the unique row it points at; the rows are distinct
    assert np.array_equal(c.unique_rows[c.row_of_state], fsm.mask)
    assert len({r.tobytes() for r in c.unique_rows}) == c.unique_rows.shape[0]
    assert compressed(fsm) is c  # cached per automaton: the loop thread never recomputes it
    assert np.array_equal(compress(fsm).row_of_state, c.row_of_state)


def test_one_constraint_may_use_the_whole_pool(vocab):
    """The per-constraint state limit is the pool's (grammar_max_states), not a separate constant:
    SGLang's character regex with Unicode classes needs ~25.7k states on SmolLM2's vocabulary."""
    from jaxsgl.engine.grammar import GrammarRuntime

    small = GrammarRuntime(vocab, max_states=8, max_mask_rows=64, max_exceptions=1 << 12, enable_jump_forward=True,
                           wake=lambda: None)
    with pytest.raises(Exception, match="max_states=8"):
        small.compiler.compile(SPECS[0])
    big = GrammarRuntime(vocab, max_states=1 << 16, max_mask_rows=64, max_exceptions=1 << 12,
                         enable_jump_forward=True, wake=lambda: None)
    assert big.compiler.compile_options["max_states"] == 1 << 16
    assert big.compiler.compile(SPECS[0]).num_states > 8
