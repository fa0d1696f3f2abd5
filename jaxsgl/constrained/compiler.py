"""compile_constraint and GrammarCompiler: compile off the caller's thread, cache by (spec, vocab).

Where compiles run (measured, see docs/constrained.md): outlines-core builds its index with the GIL
released, but turning a big index into tables does not (its serialisation and the numpy passes
held the GIL for up to hundreds of milliseconds on a 2M-transition schema), which would stall the
engine's loop thread. So regex / JSON-schema / choices compile in worker *processes* (spawned;
each gets the vocabulary once through the pool initializer; results are numpy tables, cheap to
pickle). EBNF grammars compile on a thread (llguidance releases the GIL and its objects do not
pickle). `processes=False` runs everything on threads (tests, debugging). Spawned workers import
the parent's `__main__` module, so a script that makes an Engine must keep its top-level code under
`if __name__ == "__main__":` (as with any spawn-based pool; pytest, notebooks and `python -m` entry
points with that guard are fine).

The cache is an LRU bounded by the tables' bytes; concurrent submits of one spec share one
compile; compile errors are cached too (bounded by count). The cache key is (spec, vocabulary,
compile options): the backend and the JSON whitespace pattern change what a spec compiles to.

Backends (EngineOptions.grammar_backend, SGLang's `--grammar-backend` names):
    "outlines"    regex / json_schema / choices -> TokenAutomaton (outlines-core; device tables,
                  compressed-FSM jump-forward); ebnf -> EbnfGrammar (llguidance)
    "llguidance"  every kind -> EbnfGrammar (llguidance compiles lazily: milliseconds; masks on the host)
"""
from __future__ import annotations

import multiprocessing
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Union

from jaxsgl.constrained.automaton import TokenAutomaton
from jaxsgl.constrained.ebnf import EbnfGrammar
from jaxsgl.constrained.errors import ConstraintError
from jaxsgl.constrained.json_schema import schema_to_regex
from jaxsgl.constrained.regex_compile import DEFAULT_MAX_STATES, DEFAULT_MAX_TRANSITIONS, compile_regex
from jaxsgl.constrained.spec import ConstraintSpec
from jaxsgl.constrained.table_pool import compressed
from jaxsgl.constrained.vocab import TokenVocab

CompiledConstraint = Union[TokenAutomaton, EbnfGrammar]
GRAMMAR_BACKENDS: tuple[str, ...] = ("outlines", "llguidance")
MAX_CACHED_ERRORS = 256
_Key = tuple  # (ConstraintSpec, vocabulary key, sorted compile options)
DEFAULT_WORKER_MEMORY = 8 * 1024**3  # address-space cap of a compile process: a runaway regex kills it, not us


def check_backend(backend: str) -> str:
    """backend if it is one of GRAMMAR_BACKENDS, else ValueError listing them."""
    if backend not in GRAMMAR_BACKENDS:
        raise ValueError(f"unknown grammar_backend {backend!r}; choices: {', '.join(GRAMMAR_BACKENDS)}")
    return backend


def host_side(spec: ConstraintSpec, backend: str = "outlines") -> bool:
    """True if spec compiles to an EbnfGrammar (a host mask per step), False for device tables."""
    return spec.kind == "ebnf" or check_backend(backend) == "llguidance"


def compile_constraint(
    spec: ConstraintSpec,
    vocab: TokenVocab,
    *,
    backend: str = "outlines",
    max_states: int = DEFAULT_MAX_STATES,
    max_transitions: int = DEFAULT_MAX_TRANSITIONS,
    json_whitespace_pattern: str | None = None,
) -> CompiledConstraint:
    """Tables for a regex / json_schema / choices spec, an EbnfGrammar for ebnf (or for every kind
    with backend="llguidance"); ConstraintError if bad, ValueError for an unknown backend.

    json_whitespace_pattern: the whitespace allowed between JSON tokens (None: outlines' `[ ]?`,
    as SGLang; "" gives compact JSON, whose keys and punctuation are then all forced).
    """
    if host_side(spec, backend):
        return EbnfGrammar(spec.source, vocab, kind=spec.kind, json_whitespace_pattern=json_whitespace_pattern)
    if spec.kind == "json_schema":
        regex = schema_to_regex(spec.source, json_whitespace_pattern)
    else:
        regex = spec.source
    return compile_regex(regex, vocab, max_states=max_states, max_transitions=max_transitions)


# ---- worker-process side -------------------------------------------------------------------

_worker_vocab: TokenVocab | None = None


def _init_worker(token_bytes: list[bytes], eos_ids: tuple[int, ...], memory_limit: int | None) -> None:
    """Process-pool initializer: rebuild the vocabulary once (mutates this process's globals)."""
    global _worker_vocab
    if memory_limit:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (ImportError, ValueError, OSError):
            pass
    _worker_vocab = TokenVocab(token_bytes, eos_ids)


def _compile_in_worker(spec: ConstraintSpec, options: dict[str, Any]) -> tuple[TokenAutomaton, float]:
    """(tables without the vocabulary reference, compile seconds); runs in a worker process."""
    assert _worker_vocab is not None, "worker not initialised"
    start = time.perf_counter()
    fsm = compile_constraint(spec, _worker_vocab, **options)
    assert isinstance(fsm, TokenAutomaton)
    fsm.token_bytes = ()  # the parent re-attaches its own list: do not pickle 49k tokens back
    return fsm, time.perf_counter() - start


# ---- caller side ---------------------------------------------------------------------------


@dataclass
class CompilerStats:
    """Counters of a GrammarCompiler (read under its lock for a consistent view)."""

    hits: int = 0  # served from the cache (including cached errors)
    misses: int = 0  # compiles started
    deduplicated: int = 0  # submits that joined an in-flight compile of the same spec
    errors: int = 0  # compiles that raised
    evictions: int = 0
    compile_seconds: float = 0.0
    bytes: int = 0  # nbytes of cached entries
    entries: int = 0


class GrammarCompiler:
    """Compiles constraints for one vocabulary off the caller's thread; LRU-caches results by bytes.

    `submit` never blocks on a compile. Every method is thread-safe.
    """

    def __init__(
        self,
        vocab: TokenVocab,
        *,
        max_cache_bytes: int = 512 * 1024 * 1024,
        max_workers: int = 1,
        processes: bool = True,
        worker_memory_limit: int | None = DEFAULT_WORKER_MEMORY,
        **compile_options: Any,
    ) -> None:
        self.vocab = vocab
        self.max_cache_bytes = max_cache_bytes
        self.max_workers = max_workers
        self.processes = processes
        self.worker_memory_limit = worker_memory_limit
        self.compile_options = compile_options
        self.backend = check_backend(compile_options.get("backend", "outlines"))
        self._options_key = tuple(sorted(compile_options.items()))  # part of every cache key
        self.stats = CompilerStats()
        self._threads = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="jaxsgl-grammar")
        self._pool: ProcessPoolExecutor | None = None  # started on the first table compile
        self._lock = threading.Lock()
        self._cache: OrderedDict[_Key, CompiledConstraint] = OrderedDict()
        self._errors: OrderedDict[_Key, BaseException] = OrderedDict()
        self._inflight: dict[_Key, Future] = {}
        self._closed = False

    def _key(self, spec: ConstraintSpec) -> _Key:
        return (spec, self.vocab.key, self._options_key)

    def get(self, spec: ConstraintSpec) -> CompiledConstraint | None:
        """The cached result for spec, or None (never compiles; marks the entry recently used)."""
        with self._lock:
            found = self._cache.get(self._key(spec))
            if found is not None:
                self._cache.move_to_end(self._key(spec))
            return found

    def submit(self, spec: ConstraintSpec) -> Future:
        """A future of the compiled constraint (done at once on a cache hit); mutates the cache/stats."""
        key = self._key(spec)
        with self._lock:
            if self._closed:
                raise RuntimeError("GrammarCompiler is shut down")
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return _done(self._cache[key], None)
            if key in self._errors:
                self.stats.hits += 1
                return _done(None, self._errors[key])
            if key in self._inflight:
                self.stats.deduplicated += 1
                return self._inflight[key]
            self.stats.misses += 1
            future: Future = Future()
            future.set_running_or_notify_cancel()
            self._inflight[key] = future
            pool = self._process_pool_locked() if self.processes and not host_side(spec, self.backend) else None
        if pool is None:
            self._threads.submit(self._compile_on_thread, key)
        else:
            pool.submit(_compile_in_worker, spec, self.compile_options).add_done_callback(
                lambda done: self._finish_from_process(key, done))
        return future

    def warm_up(self) -> Future:
        """Start the worker processes now (spawn + vocabulary), so the first request does not wait."""
        with self._lock:
            if not self.processes:
                return _done(None, None)
            pool = self._process_pool_locked()
        return pool.submit(int)

    def compile(self, spec: ConstraintSpec) -> CompiledConstraint:
        """Blocking convenience: submit(spec).result()."""
        return self.submit(spec).result()

    def _process_pool_locked(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.max_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.vocab.token_bytes, self.vocab.eos_ids, self.worker_memory_limit),
            )
        return self._pool

    def _compile_on_thread(self, key: _Key) -> None:
        start = time.perf_counter()
        try:
            result = compile_constraint(key[0], self.vocab, **self.compile_options)
        except BaseException as e:  # noqa: BLE001 - every failure goes to the future
            self._finish(key, None, e, time.perf_counter() - start)
            return
        self._finish(key, result, None, time.perf_counter() - start)

    def _finish_from_process(self, key: _Key, done: Future) -> None:
        try:
            fsm, seconds = done.result()
        except BrokenProcessPool as e:
            with self._lock:
                self._pool = None  # a worker died (memory cap, crash): start a fresh pool next time
            error = ConstraintError(f"constraint compile worker died (over the memory limit?): {e}")
            self._finish(key, None, error, 0.0, cache_error=False)
            return
        except BaseException as e:  # noqa: BLE001
            self._finish(key, None, e, 0.0)
            return
        fsm.token_bytes = self.vocab.token_bytes
        self._finish(key, fsm, None, seconds)

    def _finish(self, key: _Key, result: CompiledConstraint | None,
                error: BaseException | None, seconds: float, cache_error: bool = True) -> None:
        """Record a finished compile in the cache and stats, then resolve its future. Device
        tables are also compressed here (table_pool.compressed), off the engine's loop thread."""
        if isinstance(result, TokenAutomaton):
            start = time.perf_counter()
            compressed(result)
            seconds += time.perf_counter() - start
        with self._lock:
            future = self._inflight.pop(key, None)
            if future is None:  # already failed by shutdown(wait=False)
                return
            self.stats.compile_seconds += seconds
            if error is not None:
                self.stats.errors += 1
                if cache_error and isinstance(error, ConstraintError):
                    self._errors[key] = error
                    while len(self._errors) > MAX_CACHED_ERRORS:
                        self._errors.popitem(last=False)
            elif result is not None and result.nbytes <= self.max_cache_bytes:
                self._cache[key] = result
                self.stats.bytes += result.nbytes
                self._evict_locked()
            self.stats.entries = len(self._cache)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _evict_locked(self) -> None:
        """Drop least recently used entries until the cache fits max_cache_bytes (lock held)."""
        while self.stats.bytes > self.max_cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self.stats.bytes -= old.nbytes
            self.stats.evictions += 1

    def cached_specs(self) -> list[ConstraintSpec]:
        """Cached specs, least recently used first."""
        with self._lock:
            return [key[0] for key in self._cache]

    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting submits and stop the workers (waiting for running compiles if wait)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        self._threads.shutdown(wait=wait, cancel_futures=not wait)
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=not wait)
        if not wait:
            with self._lock:
                pending = list(self._inflight.items())
            for key, future in pending:
                if not future.done():
                    self._finish(key, None, ConstraintError("GrammarCompiler shut down"), 0.0, cache_error=False)


def _done(result: CompiledConstraint | None, error: BaseException | None) -> Future:
    future: Future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return future
