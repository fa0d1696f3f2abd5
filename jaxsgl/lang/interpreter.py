"""The interpreter: one StreamExecutor (a worker thread + a queue) per stream of execution.

A program's `s += expr` only enqueues; the worker runs expressions in order, calling the
backend for each gen/select, so forked branches and the programs of a batch all reach the
engine at once and are batched there. Reading a variable (`s["x"]`) waits for it.

    program thread:  s += "Q"  s += gen("a")  s["a"]  ...  end()
                         |          |            ^ wait(event "a")
    worker thread:   fill "Q" -> backend.generate(text) -> set "a" -> ...

An exception in the worker is recorded (`error()`), every waiter is released, and the rest of the
queue is skipped, so a failing program never hangs its caller.
"""
from __future__ import annotations

import queue
import threading
import traceback
import uuid
import warnings
from typing import Any, Optional

from jaxsgl.lang.backend.base import BaseBackend
from jaxsgl.lang.chat_template import ChatTemplate
from jaxsgl.lang.global_config import global_config
from jaxsgl.lang.ir import (CommitLazy, ConcatAndAppend, ConstantText, Expr, ExprList, Gen, RoleBegin, RoleEnd,
                            SamplingParams, Select, VarScopeBegin, VarScopeEnd)

_STOP = object()


class StreamExecutor:
    """Executes one state's expressions in order on a background thread."""

    def __init__(self, backend: BaseBackend, arguments: dict[str, Any], default_sampling_params: SamplingParams,
                 chat_template: Optional[ChatTemplate], stream: bool):
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_params = default_sampling_params
        self.chat_template = chat_template
        self.stream = stream

        self.variables: dict[Any, Any] = {}
        self.variable_event: dict[Any, threading.Event] = {}
        self.meta_info: dict[Any, Any] = {}
        self.text_ = ""
        self.messages_: list[dict[str, str]] = []
        self.cur_role: Optional[str] = None
        self.cur_role_begin_pos: Optional[int] = None
        self.fork_start_text_pos: Optional[int] = None
        self.engine_seen_len = 0  # text_[:engine_seen_len] was a prompt or output the backend processed
        self.error_: Optional[BaseException] = None
        self.error_traceback: Optional[str] = None
        self.is_finished = False

        self._cond = threading.Condition()  # notified whenever text / variables change (streaming)
        self._ended = False
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._worker = threading.Thread(target=self._work, name=f"sgl-exec-{self.sid[:6]}", daemon=True)
        self._worker.start()

    # ---- called from the program thread ----
    def submit(self, expr: Any) -> None:
        self._init_var_events(expr)
        if self._ended:  # after the program returned: run inline
            self.sync()
            self._run_one(expr)
        else:
            self._queue.put(expr)

    def sync(self) -> None:
        self._queue.join()

    def end(self) -> None:
        """No more expressions will come; the worker exits after the queue drains."""
        if not self._ended:
            self._ended = True
            self._queue.put(_STOP)
            self.backend.end_program(self)

    def record_error(self, err: BaseException) -> None:
        if self.error_ is None:
            self.error_ = err
            self.error_traceback = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            if global_config.verbosity >= 1:
                warnings.warn(f"error in an sgl program:\n{self.error_traceback}")
        self._release_waiters()

    def get_var(self, name: Any) -> Any:
        event = self.variable_event.get(name)
        if event is not None:
            event.wait()
        if name not in self.variables and self.error_ is not None:
            raise KeyError(f"variable {name!r} was not produced: the program failed with {self.error_!r}")
        return self.variables[name]

    def set_var(self, name: Any, value: Any) -> None:
        self.variables[name] = value

    def get_meta_info(self, name: Any, timeout: Optional[float] = None) -> Any:
        event = self.variable_event.get(name)
        if event is not None and not event.wait(timeout):
            raise TimeoutError(f"timed out waiting for {name!r}")
        return self.meta_info.get(name)

    def text(self) -> str:
        self.sync()
        return self.text_

    def messages(self) -> list[dict[str, str]]:
        self.sync()
        return self.messages_

    def error(self) -> Optional[BaseException]:
        self.sync()
        return self.error_

    def fork(self, size: int = 1) -> list["StreamExecutor"]:
        """size copies of this state; for size > 1 new shared text is committed (prefilled) first."""
        self.sync()
        size = int(size)
        new_chars = len(self.text_) - self.engine_seen_len
        if size > 1 and global_config.enable_fork_hint and self.error_ is None \
                and new_chars >= max(1, global_config.fork_hint_min_new_chars):
            self.submit(CommitLazy())
            self.sync()
        children = []
        for _ in range(size):
            child = StreamExecutor(self.backend, self.arguments, self.default_sampling_params,
                                   self.chat_template, self.stream)
            child.variables = dict(self.variables)
            child.meta_info = dict(self.meta_info)
            child.text_ = self.text_
            child.messages_ = list(self.messages_)
            child.cur_role = self.cur_role
            child.cur_role_begin_pos = self.cur_role_begin_pos
            child.fork_start_text_pos = len(self.text_)
            child.engine_seen_len = self.engine_seen_len
            children.append(child)
        return children

    def wait_stream(self, predicate: Any) -> None:
        with self._cond:
            self._cond.wait_for(predicate)

    # ---- worker thread ----
    def _work(self) -> None:
        while True:
            expr = self._queue.get()
            if expr is _STOP:
                self._queue.task_done()
                break
            if self.error_ is None:
                self._run_one(expr)
            self._queue.task_done()
        self.is_finished = True
        self._release_waiters()

    def _run_one(self, expr: Any) -> None:
        try:
            self._execute(expr)
        except Exception as err:  # recorded, never raised into the worker loop
            self.record_error(err)
        self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _release_waiters(self) -> None:
        for event in list(self.variable_event.values()):
            event.set()
        self._notify()

    def _init_var_events(self, expr: Any) -> None:
        if isinstance(expr, (Gen, Select, VarScopeBegin)):
            self.variable_event[expr.name] = threading.Event()
            if self.error_ is not None or self.is_finished:
                self.variable_event[expr.name].set()
        elif isinstance(expr, ExprList):
            for e in expr.exprs:
                self._init_var_events(e)

    def _execute(self, expr: Any) -> None:
        if isinstance(expr, str):
            self._fill(expr)
        elif isinstance(expr, ConstantText):
            self._fill(expr.value)
        elif isinstance(expr, ExprList):
            for e in expr.exprs:
                self._execute(e)
        elif isinstance(expr, Gen):
            self._execute_gen(expr)
        elif isinstance(expr, Select):
            self._execute_select(expr)
        elif isinstance(expr, RoleBegin):
            self._role_begin(expr.role)
        elif isinstance(expr, RoleEnd):
            self._role_end(expr.role)
        elif isinstance(expr, VarScopeBegin):
            self.variables[expr.name] = len(self.text_)
        elif isinstance(expr, VarScopeEnd):
            self.variables[expr.name] = self.text_[self.variables[expr.name]:]
            self.variable_event[expr.name].set()
        elif isinstance(expr, CommitLazy):
            self.backend.commit_lazy_operations(self.text_)
            self.engine_seen_len = len(self.text_)
        elif isinstance(expr, ConcatAndAppend):
            for state in expr.states:
                exe = state.stream_executor
                exe.sync()
                self._fill(exe.text_[exe.fork_start_text_pos:])
        else:
            raise TypeError(f"cannot execute {expr!r} (expected str or an sgl expression)")

    def _fill(self, value: str) -> None:
        self.text_ += str(value)

    def _execute_gen(self, expr: Gen) -> None:
        sp = expr.sampling_params.merged_over(self.default_sampling_params)
        name = expr.name
        prompt = self.text_
        if not self.stream:
            comp, meta = self.backend.generate(prompt, sp)
            self.text_ += comp[0] if isinstance(comp, list) else comp
            self.variables[name] = comp
            self.meta_info[name] = meta
        else:
            self.variables[name] = ""
            for delta, meta in self.backend.generate_stream(prompt, sp):
                self.text_ += delta
                self.variables[name] += delta
                self.meta_info[name] = meta
                self._notify()
        self.engine_seen_len = len(self.text_)  # prompt + output are in the engine's cache now
        self.variable_event[name].set()

    def _execute_select(self, expr: Select) -> None:
        decision = self.backend.select(self.text_, expr.choices, expr.temperature, expr.choices_method)
        self.variables[expr.name] = decision.decision
        self.meta_info[expr.name] = decision.meta_info
        self.text_ += decision.decision
        self.engine_seen_len = len(self.text_)
        self.variable_event[expr.name].set()

    def _role_begin(self, role: str) -> None:
        if self.chat_template is None:
            raise ValueError("role blocks (sgl.user/assistant/system) need a chat template; "
                             "this backend's tokenizer has none")
        if self.cur_role is not None:
            raise ValueError(f"nested roles are not allowed ({role!r} inside {self.cur_role!r})")
        prefix, _ = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self.text_ += prefix
        self.cur_role = role
        self.cur_role_begin_pos = len(self.text_)

    def _role_end(self, role: str) -> None:
        if self.cur_role != role:
            raise ValueError(f"role end {role!r} does not match the open role {self.cur_role!r}")
        content = self.text_[self.cur_role_begin_pos:]
        _, suffix = self.chat_template.get_prefix_and_suffix(role, self.messages_)
        self.text_ += suffix
        self.messages_.append({"role": role, "content": content})
        self.cur_role = None
        self.cur_role_begin_pos = None
