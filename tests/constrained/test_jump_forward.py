"""Compressed-FSM forced strings and their retokenized jump-forward plans (real SmolLM2 tokenizer)."""
from __future__ import annotations

import json

import pytest

from jaxsgl.constrained import ConstraintSpec, compile_constraint, plan_jump_forward

SCHEMA = {
    "type": "object",
    "properties": {
        "character_name": {"type": "string"},
        "hit_points": {"type": "integer"},
        "alignment": {"enum": ["lawful good", "chaotic evil"]},
    },
    "required": ["character_name", "hit_points", "alignment"],
}
DOC = '{"character_name":"Bob","hit_points":12,"alignment":"lawful good"}'


@pytest.fixture(scope="module")
def compact_fsm(smol_vocab):
    return compile_constraint(ConstraintSpec("json_schema", json.dumps(SCHEMA)), smol_vocab, json_whitespace_pattern="")


def _follow(fsm, vocab, text):
    """[(prev_state, token, state, remaining_text)] along text's real tokenization."""
    steps, state, done = [], 0, b""
    for token in vocab.encode(text):
        nxt = fsm.next_state(state, token)
        assert nxt >= 0
        done += vocab.token_bytes[token]
        steps.append((state, token, nxt, text.encode()[len(done):]))
        state = nxt
    return steps


def test_forced_strings_hold_keys_and_punctuation(compact_fsm, smol_vocab):
    assert compact_fsm.forced_bytes(0) == b'{"character_name":"'
    forced = {compact_fsm.forced_bytes(s) for _, _, s, _ in _follow(compact_fsm, smol_vocab, DOC)}
    assert b'hit_points":' in forced and b'alignment":"' in forced and b' good"}' in forced
    # Soundness: a forced string is always a prefix of what a valid document still has to say.
    for _, _, state, rest in _follow(compact_fsm, smol_vocab, DOC):
        assert rest.startswith(compact_fsm.forced_bytes(state))
    end = _follow(compact_fsm, smol_vocab, DOC)[-1][2]
    assert compact_fsm.is_terminal(end) and compact_fsm.forced_bytes(end) == b""  # accepting: nothing forced


def test_forced_strings_with_default_whitespace(smol_vocab):
    fsm = compile_constraint(ConstraintSpec("json_schema", json.dumps(SCHEMA)), smol_vocab)
    steps = _follow(fsm, smol_vocab, '{"character_name": "Bob", "hit_points": 1, "alignment": "chaotic evil"}')
    assert fsm.forced_bytes(steps[0][2]) == b'character_name"'  # `[ ]?` stops it before the colon
    assert fsm.forced_bytes(0) == b"{"


def test_jump_plans_are_real_tokenizations(compact_fsm, smol_vocab):
    plans = 0
    for prev, token, state, _ in _follow(compact_fsm, smol_vocab, DOC):
        plan = plan_jump_forward(compact_fsm, smol_vocab, prev_state=prev, last_token=token, state=state)
        if plan is None:
            continue
        plans += 1
        text = (smol_vocab.token_bytes[token] + compact_fsm.forced_bytes(state)).decode()
        retokenized = smol_vocab.encode(text)
        kept = [token] if plan.rollback == 0 else []
        assert kept + plan.tokens == retokenized[: len(kept) + len(plan.tokens)]
        assert len(plan.tokens) >= 2
        walked = prev if plan.rollback else state
        for t in plan.tokens:
            walked = compact_fsm.next_state(walked, t)
        assert walked == plan.state
        assert smol_vocab.decode_bytes(kept + plan.tokens) == smol_vocab.token_bytes[token] + plan.forced
        if not compact_fsm.is_terminal(plan.state):  # the last retokenized token was held back
            assert len(kept) + len(plan.tokens) == len(retokenized) - 1
    assert plans >= 3


def test_terminal_jump_keeps_the_last_token(compact_fsm, smol_vocab):
    steps = _follow(compact_fsm, smol_vocab, DOC)
    prev, token, state, _ = next(s for s in steps if smol_vocab.token_bytes[s[1]] == b"lawful")
    plan = plan_jump_forward(compact_fsm, smol_vocab, prev_state=prev, last_token=token, state=state)
    assert plan is not None and plan.rollback == 0
    assert smol_vocab.decode_bytes(plan.tokens) == b' good"}' and compact_fsm.is_terminal(plan.state)


def test_merging_last_token_is_rolled_back(compact_fsm, smol_vocab):
    brace = smol_vocab.encode("{")[0]
    state = compact_fsm.next_state(0, brace)
    plan = plan_jump_forward(compact_fsm, smol_vocab, prev_state=0, last_token=brace, state=state)
    assert plan is not None and plan.rollback == 1
    assert smol_vocab.token_bytes[plan.tokens[0]] == b'{"'  # `{` + `"` retokenize as one token
    assert plan.tokens == smol_vocab.encode('{"character_name":"')[:-1]
    assert plan.forced == b'"character_name'


def test_no_jump_when_not_forced_or_too_short(compact_fsm, smol_vocab):
    steps = _follow(compact_fsm, smol_vocab, DOC)
    prev, token, state, _ = next(s for s in steps if smol_vocab.token_bytes[s[1]] == b"Bob")
    assert compact_fsm.forced_bytes(state) == b""
    assert plan_jump_forward(compact_fsm, smol_vocab, prev_state=prev, last_token=token, state=state) is None
    prev, token, state, _ = next(s for s in steps if smol_vocab.token_bytes[s[1]] == b"name")
    assert compact_fsm.forced_bytes(state) == b'":"'  # one token: a jump would gain nothing
    assert plan_jump_forward(compact_fsm, smol_vocab, prev_state=prev, last_token=token, state=state) is None


def test_plans_are_cached_per_automaton(smol_vocab):
    """A plan is computed once per (prev_state, last_token, state): the cached one equals a fresh one,
    and pickling the automaton (compile workers) leaves the cache behind."""
    import pickle

    fsm = compile_constraint(ConstraintSpec("json_schema", json.dumps(SCHEMA)), smol_vocab, json_whitespace_pattern="")
    steps = _follow(fsm, smol_vocab, DOC)
    first = [plan_jump_forward(fsm, smol_vocab, prev_state=p, last_token=t, state=s) for p, t, s, _ in steps]
    assert sum(p is not None for p in first) >= 3 and fsm.jump_plans
    again = [plan_jump_forward(fsm, smol_vocab, prev_state=p, last_token=t, state=s) for p, t, s, _ in steps]
    assert all(a is b for a, b in zip(first, again))  # the same objects: served from the cache
    fresh = compile_constraint(ConstraintSpec("json_schema", json.dumps(SCHEMA)), smol_vocab,
                               json_whitespace_pattern="")
    fresh.jump_plans.clear()
    assert [plan_jump_forward(fresh, smol_vocab, prev_state=p, last_token=t, state=s)
            for p, t, s, _ in steps] == first
    assert pickle.loads(pickle.dumps(fsm)).jump_plans == {}
