"""Host side of sampling: pack per-request settings into a SamplingInput, unpack input logprobs."""
from __future__ import annotations

import numpy as np

from jaxsgl.engine.grammar import GrammarRuntime
from jaxsgl.engine.model_runner import StepOutputHost
from jaxsgl.engine.request_state import RequestState
from jaxsgl.engine.sampling import SamplingFlags, SamplingInput
from jaxsgl.model.step_input import StepInput
from jaxsgl.scheduler import ScheduledBatch


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _wants_input_logprobs(seq, st: RequestState) -> bool:
    return seq.is_prefill and st.logprob_start_len >= 0


def greedy_sampling_input(S: int, T: int) -> SamplingInput:
    """Settings of an all-greedy batch (for warm-up and benchmarks)."""
    z = lambda dt: np.zeros(S, dt)
    return SamplingInput(z(np.float32), np.ones(S, np.float32), z(np.int32), z(np.float32), z(np.float32),
                         z(np.float32), np.ones(S, np.float32), z(np.uint32), z(np.int32),
                         np.full((S, 1), -1, np.int32), np.zeros((S, 1), np.bool_), np.full(T, -1, np.int32),
                         np.full((S, 1), -1, np.int32), np.full(S, -1, np.int32), np.full(S, -1, np.int32),
                         np.zeros((1, 1), np.uint32))


def _banned(st: RequestState, eos_ids: set[int]) -> list[int]:
    """Tokens the request may not sample next: its stop tokens while under min_new_tokens
    (len(output_ids) counts in-flight placeholders: the tokens before the one sampled now)."""
    p = st.params
    if len(st.req.output_ids) >= p.min_new_tokens:
        return []
    return sorted(set(p.stop_token_ids) | (set() if p.ignore_eos else eos_ids))


def build_sampling_input(batch: ScheduledBatch, states: list[RequestState], step: StepInput,
                         eos_ids: set[int] = frozenset(), src: np.ndarray | None = None,
                         grammar: GrammarRuntime | None = None) -> tuple[SamplingInput, SamplingFlags]:
    """Per-row arrays padded to the step's S (and T) plus the static flags they need.
    src: the step's placeholder sources (a row whose fed token is a placeholder takes its
    automaton state from that previous-step row, on the device). May fill EBNF masks (mutates
    nothing else)."""
    S, T, n = step.num_seqs, step.num_tokens, len(states)
    rows, counters, silent, penal, want_in, bans = [], [], [], [], [], {}
    for i, (seq, st) in enumerate(zip(batch.seqs, states)):  # one pass over plain Python values: per-element
        p, req = st.params, st.req                            # numpy writes cost ~1 ms at batch 256
        row = p.device_row
        rows.append(row)
        counters.append(len(req.output_ids))
        if not (seq.need_logits and req.max_new_tokens > 0):  # its token is unused: no need to sample it
            silent.append(i)
        if row[8]:
            penal.append(i)
        if _wants_input_logprobs(seq, st):
            want_in.append(i)
        if seq.need_logits and counters[-1] < p.min_new_tokens:
            bans[i] = _banned(st, eos_ids)
    cols = list(zip(*rows)) or [()] * 8

    def column(values, dtype, pad) -> np.ndarray:
        out = np.full(S, pad, dtype)
        out[:n] = values
        return out
    temp, top_p, top_k, min_p = (column(cols[0], np.float32, 0), column(cols[1], np.float32, 1),
                                 column(cols[2], np.int32, 0), column(cols[3], np.float32, 0))
    temp[silent] = 0.0
    freq, pres, rep = column(cols[4], np.float32, 0), column(cols[5], np.float32, 0), column(cols[6], np.float32, 1)
    seed, counter = column(cols[7], np.uint32, 0), column(counters, np.int32, 0)
    M = _pow2(max(states[i].req.seq_len for i in penal)) if penal else 1
    pen_ids = np.full((S, M), -1, np.int32)
    pen_out = np.zeros((S, M), np.bool_)
    for i in penal:
        ids = states[i].req.all_ids
        pen_ids[i, :len(ids)] = ids
        pen_out[i, len(states[i].req.prompt_ids):len(ids)] = True
    next_ids = np.full(T, -1, np.int32)
    for i in want_in:
        seq, prompt = batch.seqs[i], states[i].req.prompt_ids
        a = int(step.query_start[i])
        for j in range(seq.num_new):
            pos = seq.cached_len + j
            if pos + 1 < len(prompt):
                next_ids[a + j] = prompt[pos + 1]
    bans = {i: b for i, b in bans.items() if b}
    B = _pow2(max(map(len, bans.values()))) if bans else 1
    ban_ids = np.full((S, B), -1, np.int32)
    for i, b in bans.items():
        ban_ids[i, :len(b)] = b
    g_state, g_src = np.full(S, -1, np.int32), np.full(S, -1, np.int32)
    host_mask = np.zeros((1, 1), np.uint32)
    has_host = False
    if grammar is not None:
        for i, st in enumerate(states):
            if st.grammar is None or not batch.seqs[i].need_logits:
                continue
            last = int(src[int(step.query_start[i + 1]) - 1]) if src is not None else -1
            if st.grammar.fsm is not None:
                g_state[i], g_src[i] = (-1, last) if last >= 0 else (grammar.row_state(st), -1)
            elif st.grammar.matcher is not None:
                if not has_host:
                    host_mask = np.full((S, grammar.words), 0xFFFFFFFF, np.uint32)
                    has_host = True
                grammar.host_mask(st, host_mask[i])
    sampled = temp[:n] > 0
    top_n = max([st.top_logprobs_num for st in states] + [0])
    flags = SamplingFlags(
        sample=bool(sampled.any()),
        filter=bool(np.any(sampled & ((top_k[:n] > 0) | (top_p[:n] < 1) | (min_p[:n] > 0)))),
        penalties=bool(penal),
        input_logprobs=bool(want_in),
        top_logprobs=_pow2(top_n) if top_n else 0,
        ban=bool(bans),
        grammar=bool((g_state >= 0).any() or (g_src >= 0).any()),
        host_mask=has_host)
    si = SamplingInput(temp, top_p, top_k, min_p, freq, pres, rep, seed, counter, pen_ids, pen_out, next_ids,
                       ban_ids, g_state, g_src, host_mask)
    return si, flags


def record_logprobs(batch: ScheduledBatch, states: list[RequestState], step: StepInput,
                    out: StepOutputHost) -> None:
    """Store the input-token logprobs this step computed into each request's state (mutates states)."""
    for i, (seq, st) in enumerate(zip(batch.seqs, states)):
        if not _wants_input_logprobs(seq, st):
            continue
        a, prompt_len, k = int(step.query_start[i]), len(st.req.prompt_ids), st.top_logprobs_num
        for j in range(seq.num_new):
            target = seq.cached_len + j + 1  # the prompt position whose token this row predicts
            if st.logprob_start_len <= target < prompt_len:
                st.input_logprobs[target] = float(out.input_logprobs[a + j])
                if k:
                    st.input_top[target] = [(float(lp), int(t), None) for lp, t in
                                            zip(out.input_top_logprobs[a + j][:k], out.input_top_ids[a + j])]
