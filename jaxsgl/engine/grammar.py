"""GrammarRuntime: constrained requests from compile to finish (the engine's loop thread).

    submit(st)      a request with a constraint: compile off-thread (GrammarCompiler), wait in the
                    grammar queue (holding up nobody)
    poll()          compiled ones: place the automaton in the device tables (AutomatonPool +
                    grammar_tables.apply_upload) -> ready to schedule; failed ones -> their error
    row inputs      per sampling row: its global automaton state, or the previous step's row
                    that computes it on the device (overlap), or a host mask (EBNF)
    advance(st)     after a token is filled: the automaton's new state (read back from the device),
                    or the EBNF matcher consumes it; jump-forward plans
    release(st)     unpin at finish

Regex / JSON-schema / choices automata run on the device (mask + next state in the jitted
sampler). EBNF grammars (llguidance, a stack machine) compute their mask on the host while
building the step; such a request is not scheduled while its previous token is still on the
device (Req.needs_known_tokens), so it decodes every other step under overlap and never stalls
the other requests. With backend="llguidance" (EngineOptions.grammar_backend) every constraint
takes the host path; its jump-forward is llguidance's fast-forward tokens, as for EBNF.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
import numpy as np

from jaxsgl.constrained import (DEFAULT_MAX_STATES, ConstraintError, ConstraintSpec, EbnfGrammar, GrammarCompiler,
                                JumpForward, TokenAutomaton, TokenVocab, check_backend, host_side,
                                plan_jump_forward)
from jaxsgl.constrained.table_pool import AutomatonPool, PoolFull
from jaxsgl.engine import grammar_tables
from jaxsgl.engine.request_state import GrammarState, RequestState

log = logging.getLogger(__name__)


_COMPILERS: dict[tuple[str, str, str | None, int], GrammarCompiler] = {}
_COMPILERS_LOCK = threading.Lock()


def shared_compiler(vocab: TokenVocab, *, backend: str = "outlines", json_whitespace_pattern: str | None = None,
                    max_states: int = DEFAULT_MAX_STATES) -> GrammarCompiler:
    """One GrammarCompiler (and compile cache) per (vocabulary, backend, JSON whitespace pattern) in
    the process: engines over the same tokenizer and options share compiled constraints. Compiles
    run on a thread (outlines-core releases the GIL while indexing; turning the index into tables
    holds it for up to ~0.2 s per new constraint): worker processes would re-import a user's
    unguarded script. max_states bounds one constraint's automaton (the device pool's size: a
    constraint larger than the pool could never be resident)."""
    key = (vocab.key, check_backend(backend), json_whitespace_pattern, max_states)
    with _COMPILERS_LOCK:
        if key not in _COMPILERS:
            _COMPILERS[key] = GrammarCompiler(vocab, processes=False, backend=backend,
                                              json_whitespace_pattern=json_whitespace_pattern, max_states=max_states)
        return _COMPILERS[key]


class GrammarRuntime:
    """Compile queue, device tables and per-request automaton state. Loop thread only, except
    the compile callbacks, which only call `wake`."""

    def __init__(self, vocab: TokenVocab, *, max_states: int, max_mask_rows: int, max_exceptions: int,
                 enable_jump_forward: bool, wake: Callable[[], None], backend: str = "outlines",
                 json_whitespace_pattern: str | None = None) -> None:
        self.vocab = vocab
        self.backend = backend
        self.compiler = shared_compiler(vocab, backend=backend, json_whitespace_pattern=json_whitespace_pattern,
                                        max_states=max_states)
        self.words = (vocab.vocab_size + 31) // 32
        self.pool = AutomatonPool(max_states, max_mask_rows, max_exceptions, self.words)
        self._limits = (max_states, max_mask_rows, max_exceptions)
        self.tables: grammar_tables.GrammarTables | None = None  # allocated at the first constrained request
        self.enable_jump_forward = enable_jump_forward
        self.waiting: list[RequestState] = []
        self._wake = wake

    # ------------------------------------------------------------------ queue
    def submit(self, st: RequestState, spec: ConstraintSpec) -> None:
        """Start compiling st's constraint; st waits in the grammar queue until poll() admits it.
        A host-side constraint (EBNF, or any with the llguidance backend) marks st.req as needing
        known tokens (before the scheduler ever sees it)."""
        st.req.needs_known_tokens = st.req.needs_known_tokens or host_side(spec, self.backend)
        st.grammar = GrammarState(spec, future=self.compiler.submit(spec))
        st.grammar.future.add_done_callback(lambda _: self._wake())
        self.waiting.append(st)

    def has_ready(self) -> bool:
        return any(st.grammar.future.done() for st in self.waiting)

    def poll(self) -> tuple[list[RequestState], list[tuple[RequestState, BaseException]]]:
        """Requests whose constraint is compiled and placed (ready to schedule), and failures.
        Mutates the pool and the device tables."""
        ready, failed, still = [], [], []
        for st in self.waiting:
            g = st.grammar
            if st.done:
                continue
            if not g.future.done():
                still.append(st)
                continue
            try:
                compiled = g.future.result()
                if isinstance(compiled, EbnfGrammar):
                    g.matcher = compiled.matcher()
                else:
                    self._place(g, compiled)
                g.future = None
                ready.append(st)
            except PoolFull:
                still.append(st)  # waits until finished requests unpin room
            except Exception as e:  # a bad constraint fails its request only
                failed.append((st, e))
        self.waiting = still
        return ready, failed

    def _place(self, g: GrammarState, fsm: TokenAutomaton) -> None:
        if not self.pool.fits_ever(fsm):
            raise ValueError(f"constraint too large for the grammar tables: {fsm.num_states} states "
                             f"(grammar_max_states={self._limits[0]}, grammar_max_exceptions={self._limits[2]})")
        placement, upload = self.pool.acquire(g.spec, fsm)
        if upload is not None:
            if self.tables is None:
                self.tables = grammar_tables.init_tables(*self._limits, self.words)
            self.tables = grammar_tables.apply_upload(self.tables, upload)
        g.fsm, g.base = fsm, placement.state_base

    def release(self, st: RequestState) -> None:
        """Unpin st's automaton (at finish); a request still compiling leaves the queue."""
        g = st.grammar
        if g is None:
            return
        if g.fsm is not None:
            self.pool.release(g.spec)
            g.fsm = None
        if st in self.waiting:
            self.waiting.remove(st)

    # ------------------------------------------------------------------ per token
    def row_state(self, st: RequestState) -> int:
        """The global automaton state a sampling row of st starts from (host-known)."""
        g = st.grammar
        return g.base + g.state if g is not None and g.fsm is not None else -1

    def host_mask(self, st: RequestState, out: np.ndarray) -> bool:
        """Fill out (uint32[W]) with st's EBNF mask; False if st has no host-side constraint. If the
        matcher fails, records the error in st.grammar (the request fails at its next token, alone)
        and allows only EOS, so that the step goes on for the batch."""
        g = st.grammar
        if g is None or g.matcher is None:
            return False
        try:
            g.matcher.fill_mask(out)
        except ConstraintError as e:
            g.error = e
            out[:] = 0
            for t in self.vocab.eos_ids:
                out[t >> 5] |= np.uint32(1 << (t & 31))
        return True

    def advance(self, st: RequestState, token: int, device_state: int) -> None:
        """st's last output token is `token`; device_state is the global state the sampler
        computed for it (-1 for host-side constraints). Mutates st.grammar."""
        g = st.grammar
        if token in self.vocab.eos_ids:
            g.finished = True
            return
        if g.fsm is not None:
            local = device_state - g.base
            if not 0 <= local < g.fsm.num_states:
                raise RuntimeError(f"request {st.req.rid}: automaton state {device_state} outside its tables")
            g.prev_state, g.state = g.state, local
            g.finished = g.fsm.is_terminal(local)
        else:
            g.matcher.consume([token])
            g.finished = g.matcher.is_terminated()

    def plan_jump_forward(self, st: RequestState, token: int) -> JumpForward | None:
        """The forced continuation after st's last token, if worth an extend step."""
        g = st.grammar
        if not self.enable_jump_forward or g is None or g.finished:
            return None
        if g.fsm is not None:
            return plan_jump_forward(g.fsm, self.vocab, prev_state=g.prev_state, last_token=token, state=g.state)
        forced = g.matcher.forced_tokens()
        return JumpForward(0, forced, -1, b"") if len(forced) >= 2 else None

    def apply_jump_forward(self, st: RequestState, jf: JumpForward) -> None:
        """Move st's constraint state past a jump (the scheduler changes the tokens)."""
        g = st.grammar
        if g.fsm is not None:
            g.state = jf.state
            g.prev_state = jf.state  # no rollback across a jump: its last token is held back
            g.finished = g.fsm.is_terminal(jf.state)
        else:
            g.matcher.consume(jf.tokens)
            g.finished = g.matcher.is_terminated()
        g.jump_forward_tokens += len(jf.tokens) - jf.rollback

