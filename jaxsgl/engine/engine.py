"""Engine: tokenize -> schedule -> step -> detokenize, on a background loop thread.

    engine = jaxsgl.Engine()                      # the embedded default model
    out = engine.generate("The capital of France is", {"max_new_tokens": 8, "temperature": 0})

`generate` is thread-safe: concurrent callers' requests are batched together by the
loop thread (continuous batching). Streaming yields dicts whose "text" is the new
text since the previous chunk (concatenated, the chunks equal the non-streamed text).
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, AsyncIterator, Iterator

from jaxsgl.engine.async_stream import AsyncStream, LoopBridge
from jaxsgl.engine.model_runner import ModelRunner, kv_pages_for_memory, weights_nbytes
from jaxsgl.engine.options import EngineOptions
from jaxsgl.constrained import TokenVocab
from jaxsgl.engine.grammar import GrammarRuntime
from jaxsgl.engine.outputs import RequestTracker
from jaxsgl.engine.request_io import forward_event, prepare_requests, with_times
from jaxsgl.engine.request_state import RequestState
from jaxsgl.engine.step_loop import StepLoop
from jaxsgl.engine.warmup import warm_up
from jaxsgl.kernels import INVARIANT_KV_TOKENS, resolve_impl
from jaxsgl.model.compile_cache import enable_compilation_cache
from jaxsgl.model.loader import load_model, resolve_dtype
from jaxsgl.scheduler import Scheduler, StepInputBuilder
from jaxsgl.scheduler.records import request_records
from jaxsgl.tokenizer import eos_token_ids, load_tokenizer

log = logging.getLogger(__name__)
CPU_DEFAULT_TOTAL_TOKENS = 16384
GEN_THROUGHPUT_WINDOW_S = 10.0  # get_load()["gen_throughput"]: generated tokens/s over this window


class Engine:
    """An in-process engine over one model. Options: see EngineOptions (SGLang's names)."""

    def __init__(self, model_path: str | None = None, **options: Any) -> None:
        self.options = opts = EngineOptions.from_kwargs(model_path, options)
        t0 = time.perf_counter()
        enable_compilation_cache()
        self.cfg, weights, self.model_dir = load_model(opts.model_path, dtype=opts.dtype,
                                                       load_format=opts.load_format, seed=opts.random_seed)
        t_sched = time.perf_counter()
        kv_dtype = weights.embed.dtype if opts.kv_cache_dtype == "auto" else resolve_dtype(opts.kv_cache_dtype)
        ps = opts.page_size
        context = min(opts.context_length or self.cfg.max_position_embeddings, self.cfg.max_position_embeddings)
        if opts.max_total_tokens:
            num_pages = -(-opts.max_total_tokens // ps)
        else:
            num_pages = kv_pages_for_memory(self.cfg, ps, kv_dtype, opts.mem_fraction_static,
                                            weights_nbytes(weights)) or CPU_DEFAULT_TOTAL_TOKENS // ps
        self.attn_impl = resolve_impl(opts.attention_backend)
        self.context_len = min(context, num_pages * ps)
        self.scheduler = Scheduler.create(
            num_pages, ps, eviction_policy=opts.radix_eviction_policy, disable_radix_cache=opts.disable_radix_cache,
            schedule_policy=opts.schedule_policy, max_running_requests=opts.max_running_requests,
            max_prefill_tokens=opts.max_prefill_tokens, chunked_prefill_size=opts.chunked_prefill_size,
            max_context_len=self.context_len, max_wait_steps=opts.max_wait_steps,
            enable_prefix_dedup=opts.enable_prefix_dedup, random_seed=opts.random_seed)
        # The reference attention costs O(page-table width): give it several widths, the narrowest one
        # reference KV block (deterministic too: its softmax then folds those blocks in order, so the width
        # does not order a row's sums). Kernels stop at kv_len.
        several_widths = self.attn_impl == "reference"
        self.builder = StepInputBuilder.for_engine(
            ps, prefill_budget=self.scheduler.config.prefill_budget, max_running_requests=opts.max_running_requests,
            max_context_len=self.context_len, seq_buckets=opts.seq_buckets,
            min_page_tokens=INVARIANT_KV_TOKENS if several_widths else None)
        log.info("scheduler and step buckets in %.1fs", time.perf_counter() - t_sched)
        # one compiled page-table width (the kernels stop at kv_len): steps send only the columns in use
        one_width = len(self.builder.page_buckets) == 1
        self.builder.narrow_page_tables = one_width
        self.runner = ModelRunner(self.cfg, weights, num_pages=num_pages, page_size=ps, kv_dtype=kv_dtype,
                                  attn_impl=self.attn_impl, max_seqs=self.builder.seq_buckets[-1],
                                  pages_per_seq=self.builder.page_buckets[0] if one_width else None,
                                  deterministic=opts.enable_deterministic_inference)
        self.grammar: GrammarRuntime | None = None  # made at the first constrained request (_grammar_runtime)
        self._grammar_lock = threading.Lock()
        # The tokenizer (transformers' import and, for Llama 3, a 128k vocabulary: 3-9 s of mostly Python)
        # loads while the pool compiles the step variants, which does not need the GIL. On a thread of
        # its own it would contend with the lowering and the dummy weights' init for the GIL: on the
        # H200 that made the 8B start 3-8 s slower (docs/perf.md, session 10).
        self.tokenizer = None
        load = None if opts.skip_tokenizer_init else self._load_tokenizer
        if opts.warmup:
            warm_up(self.runner, self.builder, opts.warmup_compile_threads, while_compiling=load,
                    sampled=opts.warmup_sampled)
        if load is not None and self.tokenizer is None:
            load()
        self.eos_ids = set(self.cfg.eos_token_ids) if self.tokenizer is None else \
            eos_token_ids(self.tokenizer, self.cfg.eos_token_ids)
        self.tracker = RequestTracker(self.scheduler, self.eos_ids)
        self.states = self.tracker.states  # live requests by rid
        self.loop = StepLoop(self.scheduler, self.builder, self.runner, self.tracker,
                             overlap=not opts.disable_overlap_schedule, check_integrity=opts.debug_check_integrity)
        self.step_times = self.loop.step_times  # ring buffer of per-step seconds
        self._rid = itertools.count()
        self._cv = threading.Condition()
        self._inbox: list[RequestState] = []
        self._aborts: list[str] = []
        self._stopping = False
        self._idle = False  # the loop thread waits for work (every step completed): set and read under _cv
        self._flush = False
        self._bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBridge] = weakref.WeakKeyDictionary()
        self._thread = threading.Thread(target=self._loop, name="jaxsgl-engine", daemon=True)
        self._thread.start()
        log.info("engine ready in %.1fs: %s, %d KV pages x %d, attention %s", time.perf_counter() - t0,
                 self.model_dir, num_pages, ps, self.attn_impl)

    # ------------------------------------------------------------------ public API
    def generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, return_logprob: bool | list[bool] = False,
                 logprob_start_len: int | list[int] | None = None, top_logprobs_num: int = 0,
                 stream: bool = False, priority: int | list[int] | None = None,
                 rid: str | list[str] | None = None) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (dict result) or a list (list of results, n per prompt).

        Every request is validated before any is queued: bad input raises ValueError and
        queues nothing. stream=True (single prompt, n=1) returns an iterator of increments.
        priority (larger = more important) feeds the "priority" schedule and eviction policies.
        rid names the request(s) for abort() (default: generated; with n > 1, "{rid}-{i}").
        """
        single, states = prepare_requests(self, prompt, sampling_params, input_ids, return_logprob,
                                          logprob_start_len, top_logprobs_num, stream, priority, rid)
        self._submit(states)
        if stream:
            return self._stream(states[0])
        results = [with_times(s, s.wait()) for s in states]
        return results[0] if single and len(results) == 1 else results

    async def async_generate(self, prompt: str | list[str] | None = None,
                             sampling_params: dict | list[dict] | None = None,
                             input_ids: list[int] | list[list[int]] | None = None,
                             return_logprob: bool | list[bool] = False,
                             logprob_start_len: int | list[int] | None = None, top_logprobs_num: int = 0,
                             stream: bool = False, priority: int | list[int] | None = None,
                             rid: str | list[str] | None = None) -> dict | list[dict] | AsyncIterator[dict]:
        """asyncio twin of generate() (SGLang's Engine.async_generate): returns the result(s), or with
        stream=True an AsyncStream of increments (engine/async_stream.py). The engine's loop thread wakes
        the caller's event loop directly, once per burst of increments (no thread per request). Cancelling
        the awaiting task, or closing the iterator early, aborts the request(s)."""
        single, states = prepare_requests(self, prompt, sampling_params, input_ids, return_logprob,
                                          logprob_start_len, top_logprobs_num, stream, priority, rid)
        loop = asyncio.get_running_loop()
        bridge = self._bridges.get(loop)
        if bridge is None:
            bridge = self._bridges[loop] = LoopBridge(loop)
        for st in states:
            bridge.attach(st)
        self._submit(states)
        if stream:
            return AsyncStream(states[0], with_times, self.abort)
        try:
            results = [with_times(s, await s.async_wait()) for s in states]
        finally:
            for s in states:
                if not s.done:
                    self.abort(s.req.rid)
        return results[0] if single and len(results) == 1 else results

    def submit(self, on_event: Callable[[str, str, Any], None], prompt: str | list[str] | None = None,
               sampling_params: dict | list[dict] | None = None, input_ids: list[int] | list[list[int]] | None = None,
               return_logprob: bool | list[bool] = False, logprob_start_len: int | list[int] | None = None,
               top_logprobs_num: int = 0, stream: bool = False, priority: int | list[int] | None = None,
               rid: str | list[str] | None = None) -> list[str]:
        """Validate and queue like generate() (ValueError: nothing queued), without waiting: each request's
        events go to on_event(rid, kind, payload), called on the engine's loop thread (keep it short):
        "increment" (stream=True; the increment dict), then exactly one of "finished" (the result dict) or
        "failed" (the ValueError / RuntimeError generate() would raise). Returns the request ids, in order.
        For a caller in another process (engine/engine_process.py)."""
        _, states = prepare_requests(self, prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
                                     top_logprobs_num, stream, priority, rid)
        for st in states:
            st.sink = functools.partial(forward_event, st, on_event)
        self._submit(states)
        return [st.rid for st in states]

    def _stream(self, st: RequestState) -> Iterator[dict]:
        """Increments of one request; closing the iterator early (a client that went away) aborts it."""
        try:
            for ev in st.iter_events():
                yield with_times(st, ev)
        finally:
            if not st.done:
                self.abort(st.req.rid)

    def abort(self, rid: str) -> None:
        """Cancel a request (its caller gets finish_reason 'abort')."""
        with self._cv:
            self._aborts.append(rid)
            self._cv.notify()

    def cache_stats(self) -> dict[str, Any]:
        s = self.scheduler.stats
        return {"hit_rate": s.hit_rate, **{k: v for k, v in vars(s).items() if not k.startswith("_")},
                "evicted_pages": self.scheduler.cache.stats.evicted_pages}

    def get_load(self) -> dict[str, Any]:
        """A snapshot for metrics and load balancing (read from any thread; values may be one step old).
        gen_throughput: sampled output tokens per second over the last GEN_THROUGHPUT_WINDOW_S (the
        engine's own count, all requests); num_generated_tokens: their total since start."""
        sched, pool = self.scheduler, self.scheduler.pool
        used = pool.capacity - pool.num_free - self.scheduler.cache.evictable_pages
        return {"num_running_reqs": len(sched.running), "num_queue_reqs": len(sched.waiting),
                "num_used_tokens": used * pool.page_size, "max_total_num_tokens": pool.capacity * pool.page_size,
                "token_usage": used / pool.capacity if pool.capacity else 0.0,
                "cache_hit_rate": sched.stats.hit_rate,
                "gen_throughput": self.tracker.gen_throughput(GEN_THROUGHPUT_WINDOW_S),
                "num_generated_tokens": self.tracker.generated_tokens}

    def get_server_info(self) -> dict[str, Any]:
        return {"model_path": str(self.model_dir), "options": vars(self.options), "attention_backend": self.attn_impl,
                "context_length": self.context_len, "compiled_step_variants": self.runner.num_compiled(),
                **self.cache_stats()}

    def trace(self, since_step: int = 0) -> list[dict]:
        """Per-step trace (batch size, new/cached tokens, evictions, queue length, step time) of the
        last scheduler.config.trace_capacity steps, from step `since_step` on."""
        return self.scheduler.trace_records(since_step)

    def request_records(self, t0: float | None = None) -> list[dict]:
        """Per-request records of the last 100k finished requests, with the simulator's columns
        (jaxsgl/scheduler/records.py: tokens, cached prefix, arrival / admission / first-token /
        finish times, TTFT, latency); times in seconds from t0 on perf_counter's clock (trace()'s
        end_time), default the first recorded arrival. pd.DataFrame(engine.request_records())."""
        done = list(self.tracker.finished)
        if t0 is None:
            t0 = min((t.arrival for _, t in done), default=0.0)
        return request_records(done, self.trace(), t0)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until the loop thread waits for work, at most `timeout` seconds; True if it does. Then no
        request is left and every step is complete (with overlap, the step dispatched before the last requests
        were seen to finish; and the last step's processing, which finishes requests before it ends): for
        reading a finished run's trace, every step in it has its times."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cv:
                if self._idle and not (self._inbox or self._aborts or self._flush):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)

    def flush_cache(self) -> None:
        """Drop every unlocked cached prefix before the next step (between experiments)."""
        with self._cv:
            self._flush = True
            self._cv.notify()

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=60)
        if not self._thread.is_alive():
            self.runner.release_kv()  # the pool holds most of the accelerator: free it now, not at GC

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _load_tokenizer(self) -> None:
        """Set self.tokenizer (the model directory's HF tokenizer)."""
        t0 = time.perf_counter()
        self.tokenizer = load_tokenizer(self.model_dir)
        log.info("tokenizer in %.1fs", time.perf_counter() - t0)

    def warmup(self) -> int:
        """Compile every step variant this engine can run (engine/warmup.py), on
        warmup_compile_threads threads (with warmup_sampled, the sampled steps' too). Call before
        serving (the constructor does with warmup=True). Returns the number compiled."""
        return warm_up(self.runner, self.builder, self.options.warmup_compile_threads,
                       sampled=self.options.warmup_sampled)

    # ------------------------------------------------------------------ requests
    def _submit(self, states: list[RequestState]) -> None:
        now = time.perf_counter()
        for s in states:
            s.created = now  # one arrival time per generate() call
        with self._cv:
            if self._stopping:
                raise RuntimeError("engine is shut down")
            live = [s.req.rid for s in states if s.req.rid in self.states]
            if live:
                raise ValueError(f"request id(s) already in use: {live}")
            for s in states:
                self.states[s.req.rid] = s
            self._inbox.extend(states)
            self._cv.notify()

    # ------------------------------------------------------------------ loop thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._inbox or self._aborts or self._stopping or self._flush or self.scheduler.has_work()
                           or self.loop.inflight is not None or (self.grammar is not None and self.grammar.has_ready())):
                    self._idle = True
                    self._cv.wait()
                self._idle = False
                if self._stopping:
                    break
                new, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, []
                for s in new:
                    if s.done:  # failed while queued (e.g. by _fail_all)
                        continue
                    if s.params.constraint is not None:
                        self.grammar.submit(s, s.params.constraint)  # compiles off-thread; waits in its queue
                    else:
                        self._add(s)
                if self.grammar is not None and self.grammar.waiting:
                    ready, failed = self.grammar.poll()
                    for s, e in failed:  # a bad constraint fails its request only
                        self.tracker.fail(s, e)
                    for s in ready:
                        self._add(s)
                for rid in aborts:
                    if rid in self.states:
                        self.tracker.abort(self.states[rid])
                if self._flush:
                    self.scheduler.cache.evict_all()
                    self._flush = False
            try:
                self.loop.step()
            except Exception as e:  # a failed step fails the requests in flight, never the loop
                log.exception("engine step failed")
                self._fail_all(e)
        for s in list(self.states.values()):
            self.tracker.fail(s, RuntimeError("engine shut down"))

    def _add(self, s: RequestState) -> None:
        try:
            self.scheduler.add_request(s.req)
        except ValueError as e:  # cannot fit: fail this request only
            self.tracker.fail(s, e)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def _grammar_runtime(self) -> GrammarRuntime:
        """The constrained-decoding runtime, made on first use (the vocabulary's bytes, ~0.2 s)."""
        with self._grammar_lock:
            if self.grammar is None:
                if self.tokenizer is None:
                    raise ValueError("constrained decoding needs a tokenizer (engine started with "
                                     "skip_tokenizer_init)")
                o = self.options
                vocab = TokenVocab.from_tokenizer(self.tokenizer, self.cfg.vocab_size, self.eos_ids)
                rt = GrammarRuntime(vocab, max_states=o.grammar_max_states, max_mask_rows=o.grammar_max_mask_rows,
                                    max_exceptions=o.grammar_max_exceptions,
                                    enable_jump_forward=not o.disable_regex_jump_forward, wake=self._wake,
                                    backend=o.grammar_backend,
                                    json_whitespace_pattern=o.constrained_json_whitespace_pattern)
                self.tracker.grammar = self.loop.grammar = rt
                self.grammar = rt
        return self.grammar

    def _fail_all(self, error: BaseException) -> None:
        """Abort every live request with `error`, drop the cache and start from fresh KV pages."""
        for st in list(self.states.values()):
            self.tracker.fail(st, error)
        self.loop.reset()
        self.scheduler.cache.evict_all()
        self.runner.reset_kv()
