"""An Engine's requests in and out: call arguments -> validated RequestStates, results -> timing fields."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jaxsgl.engine.detokenize import OutputText
from jaxsgl.engine.request_state import _DONE, RequestState
from jaxsgl.engine.sampling_params import SamplingParams
from jaxsgl.scheduler import Req

if TYPE_CHECKING:
    from jaxsgl.engine.engine import Engine


def forward_event(st: RequestState, on_event: Callable[[str, str, Any], None], ev: Any) -> None:
    """RequestState.sink of a submit()ted request: events as on_event(rid, kind, payload); mutates their meta_info."""
    if ev is not _DONE:
        on_event(st.rid, "increment", with_times(st, ev))
        return
    try:
        st.raise_error()
    except (ValueError, RuntimeError) as e:
        on_event(st.rid, "failed", e)
    else:
        on_event(st.rid, "finished", with_times(st, st.result()))


def with_times(st: RequestState, out: dict) -> dict:
    """Add SGLang's per-request timing fields to a result's meta_info (mutates and returns out):
    first_token_latency once a token was delivered; request_received_ts (wall clock); when finished,
    request_finished_ts and decode_throughput (tokens/s after the first); num_retractions."""
    meta = out["meta_info"]
    wall = time.time() - time.perf_counter()  # perf_counter -> epoch seconds
    meta["request_received_ts"] = st.created + wall
    meta["num_retractions"] = st.req.num_retractions
    if st.first_token_time is not None:
        meta["first_token_latency"] = st.first_token_time - st.created
    if meta.get("finish_reason") is not None:
        meta["request_finished_ts"] = st.created + meta["e2e_latency"] + wall
        decode_s = meta["e2e_latency"] - meta.get("first_token_latency", meta["e2e_latency"])
        if meta["completion_tokens"] > 1 and decode_s > 0:
            meta["decode_throughput"] = (meta["completion_tokens"] - 1) / decode_s
    return out


def prepare_requests(engine: Engine, prompt: str | list[str] | None, sampling_params: dict | list[dict] | None,
                     input_ids: list[int] | list[list[int]] | None, return_logprob: bool | list[bool],
                     logprob_start_len: int | list[int] | None, top_logprobs_num: int, stream: bool,
                     priority: int | list[int] | None, rid: str | list[str] | None) -> tuple[bool, list[RequestState]]:
    """Validate and build one generate call's RequestStates (ValueError: nothing queued); mutates as make_state."""
    single = (input_ids is not None and (not input_ids or isinstance(input_ids[0], int))) or isinstance(prompt, str)
    if input_ids is not None:
        batch_ids = [list(input_ids)] if single else [list(x) for x in input_ids]
    elif prompt is not None:
        if engine.tokenizer is None:
            raise ValueError("this engine was started with skip_tokenizer_init: pass input_ids")
        batch_ids = [engine.tokenizer.encode(p) for p in ([prompt] if single else prompt)]
    else:
        raise ValueError("generate() needs a prompt or input_ids")
    if not isinstance(top_logprobs_num, int) or not 0 <= top_logprobs_num <= engine.cfg.vocab_size:
        raise ValueError(f"top_logprobs_num must be an integer in [0, {engine.cfg.vocab_size}], "
                         f"got {top_logprobs_num!r}")
    k = len(batch_ids)
    per = lambda x, default: (x if isinstance(x, list) else [x] * k) if x is not None else [default] * k
    params_l, lp_l, start_l = per(sampling_params, None), per(return_logprob, False), per(logprob_start_len, None)
    prio_l = per(priority, 0)
    rid_l = per(rid, None)
    if not len(params_l) == len(lp_l) == len(start_l) == len(prio_l) == len(rid_l) == k:
        raise ValueError(f"per-request argument lists must have {k} entries")
    states = []
    for ids, sp, want_lp, start, prio, user_rid in zip(batch_ids, params_l, lp_l, start_l, prio_l, rid_l):
        params = SamplingParams.from_dict(sp)
        for i in range(params.n):
            name = None if user_rid is None else (str(user_rid) if params.n == 1 else f"{user_rid}-{i}")
            states.append(make_state(engine, ids, params, i, bool(want_lp), start, top_logprobs_num, stream,
                                     int(prio), name))
    names = [s.req.rid for s in states]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate request ids in one call: {names}")
    if stream and len(states) != 1:
        raise ValueError("stream=True takes a single prompt with n=1")
    return single, states


def make_state(engine: Engine, ids: list[int], params: SamplingParams, index: int, want_lp: bool, start: int | None,
               top_n: int, stream: bool, priority: int = 0, rid: str | None = None) -> RequestState:
    """One request's RequestState (raises ValueError); mutates engine._rid and, if constrained, engine.grammar."""
    engine.scheduler.check_fits(len(ids), params.max_new_tokens)
    if any(not 0 <= t < engine.cfg.vocab_size for t in ids):
        raise ValueError(f"input_ids must be in [0, {engine.cfg.vocab_size})")
    start = -1 if start is None or not want_lp else start
    if start >= len(ids) or start < -1:
        raise ValueError(f"logprob_start_len {start} is outside the prompt of {len(ids)} tokens")
    seed = params.seed if params.seed is not None else engine.options.random_seed * 1_000_003 + next(engine._rid)
    params = dataclasses.replace(params, seed=seed + index)  # each of n samples draws its own stream
    rid = rid if rid is not None else f"r{next(engine._rid)}"
    req = Req(rid, list(ids), max_new_tokens=params.max_new_tokens, priority=priority,
              logprob_start_len=max(start - 1, 0) if start >= 0 else None)
    if engine.tokenizer is None and params.stop:
        raise ValueError("stop strings need a tokenizer (engine started with skip_tokenizer_init)")
    if params.constraint is not None:
        engine._grammar_runtime()
        req.needs_known_tokens = params.constraint.kind == "ebnf"  # its mask is computed on the host
    if engine.tokenizer is None and params.stop_regex:
        raise ValueError("stop_regex needs a tokenizer (engine started with skip_tokenizer_init)")
    text = OutputText(engine.tokenizer, params.stop, params.skip_special_tokens, params.stop_regex)
    return RequestState(req, params, text, return_logprob=want_lp, logprob_start_len=start,
                        top_logprobs_num=top_n if want_lp else 0, stream=stream)
