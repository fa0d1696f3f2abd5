"""build_sampling_input: each row's settings, padding rows, bans, penalty ids and the static flags, on a
mixed batch (greedy, sampled, penalised, under min_new_tokens, a prefill chunk that samples nothing)."""
from __future__ import annotations

import numpy as np

from jaxsgl.engine.detokenize import OutputText
from jaxsgl.engine.request_state import RequestState
from jaxsgl.engine.sampling_params import SamplingParams
from jaxsgl.engine.step_sampling import build_sampling_input
from jaxsgl.model.step_input import make_step_input
from jaxsgl.scheduler import Req, ScheduledBatch, StepTrace
from jaxsgl.scheduler.batch import SeqWork

EOS = {2}


def _row(rid: str, params: SamplingParams, prompt: list[int], outputs: list[int], *, prefill_chunk: int = 0):
    req = Req(rid, prompt, max_new_tokens=params.max_new_tokens)
    req.output_ids = list(outputs)
    st = RequestState(req, params, OutputText(None, [], True, []))
    if prefill_chunk:  # the first chunk of a longer prompt: no token is sampled
        seq = SeqWork(req, prompt[:prefill_chunk], 0, [1, 2], need_logits=False, is_prefill=True)
    else:  # a decode: the last output token is fed
        n = len(prompt) + len(outputs) - 1
        seq = SeqWork(req, [outputs[-1]], n, [3, 4, 5], need_logits=True, is_prefill=False)
    return seq, st


def test_rows_padding_bans_penalties_and_flags():
    rows = [
        _row("greedy", SamplingParams(temperature=0, seed=1), [5] * 20, [9, 9]),
        _row("sampled", SamplingParams(temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, seed=2**32 + 3), [6] * 20, [8]),
        _row("penalised", SamplingParams(temperature=1.0, repetition_penalty=1.2, frequency_penalty=0.5, seed=4),
             [7, 8, 9], [10, 11]),
        _row("too_short", SamplingParams(temperature=0, min_new_tokens=5, stop_token_ids=[4], seed=5), [1] * 20, [12]),
        _row("chunk", SamplingParams(temperature=0.9, seed=6), list(range(40)), [], prefill_chunk=16),
    ]
    seqs, states = [r[0] for r in rows], [r[1] for r in rows]
    step = make_step_input([(s.new_token_ids, s.cached_len, s.pages) for s in seqs], 16, num_tokens=32,
                           num_seqs=8, pages_per_seq=4)
    si, flags = build_sampling_input(ScheduledBatch(1, seqs, StepTrace(step=1)), states, step, EOS)
    np.testing.assert_allclose(si.temperature, [0, 0.7, 1.0, 0, 0, 0, 0, 0])  # the chunk samples nothing
    np.testing.assert_allclose(si.top_p, [1, 0.9, 1, 1, 1, 1, 1, 1], rtol=1e-6)
    np.testing.assert_array_equal(si.top_k, [-1, 5, -1, -1, -1, 0, 0, 0])
    np.testing.assert_allclose(si.repetition_penalty, [1, 1, 1.2, 1, 1, 1, 1, 1], rtol=1e-6)
    np.testing.assert_array_equal(si.seed, [1, 3, 4, 5, 6, 0, 0, 0])
    np.testing.assert_array_equal(si.counter, [2, 1, 2, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(si.penalty_ids[2, :5], [7, 8, 9, 10, 11])  # prompt + outputs of row 2 only
    np.testing.assert_array_equal(si.penalty_is_output[2, :5], [0, 0, 0, 1, 1])
    assert (si.penalty_ids[[0, 1, 3]] == -1).all()
    np.testing.assert_array_equal(si.ban_ids[3, :2], [2, 4])  # eos and its stop token, under min_new_tokens
    assert (si.ban_ids[[0, 1, 2, 4]] == -1).all()
    assert flags.sample and flags.filter and flags.penalties and flags.ban
    assert not flags.input_logprobs and not flags.grammar and flags.top_logprobs == 0
