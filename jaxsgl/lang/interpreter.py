"""The interpreter: one StreamExecutor (a worker thread + a queue) per stream of execution.

A program's `s += expr` only enqueues; the worker runs expressions in order, calling the
backend for each gen/select, so forked branches and the programs of a batch all reach the
engine at once and are batched there. Reading a variable (`s["x"]`) waits for it.

    program thread:  s += "Q"  s += gen("a")  s["a"]  ...  end()
                         |          |            ^ wait(event "a")
    worker thread:   fill "Q" -> backend.generate(text) -> set "a" -> ...

An exception in the worker (a failing backend call, a bad role block) is recorded (`error()`) and
warned about, as SGLang does; every waiter is released and the rest of the queue is skipped, so a
failing program never hangs its caller. API speculative execution: see api_spec.py.
"""
from __future__ import annotations

import queue
import threading
import traceback
import uuid
import warnings
from typing import Any, Optional

from jaxsgl.lang.api_spec import ChatTurn, Speculation, eligible, flush_turn, spec_gen
from jaxsgl.lang.backend.base import BaseBackend, PromptContext
from jaxsgl.lang.chat_template import ChatTemplate
from jaxsgl.lang.ir import (CommitLazy, ConcatAndAppend, ConstantText, ExprList, Gen, Image, RoleBegin, RoleEnd,
                            SamplingParams, Select, SeparateReasoning, VarScopeBegin, VarScopeEnd, Video)
from jaxsgl.lang.multimodal import image_part, message_text, message_with_parts, video_part
from jaxsgl.lang.reasoning import model_type_for, reasoning_name, split_reasoning

_STOP = object()


class StreamExecutor:
    """Executes one state's expressions in order on a background thread."""

    def __init__(self, backend: BaseBackend, arguments: dict[str, Any], default_sampling_params: SamplingParams,
                 chat_template: Optional[ChatTemplate], stream: bool, num_api_spec_tokens: Optional[int] = None):
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_params = default_sampling_params
        self.chat_template = chat_template
        self.stream = stream
        self.num_api_spec_tokens = num_api_spec_tokens

        self.variables: dict[Any, Any] = {}
        self.variable_event: dict[Any, threading.Event] = {}
        self.meta_info: dict[Any, Any] = {}
        self.text_ = ""
        self.messages_: list[dict[str, Any]] = []
        self.images_: list[dict[str, Any]] = []  # every image/video part so far
        self.cur_images: list[dict[str, Any]] = []  # the parts of the open role block
        self.cur_role: Optional[str] = None
        self.cur_role_begin_pos: Optional[int] = None
        self.fork_start_text_pos: Optional[int] = None
        self.engine_seen_len = 0  # text_[:engine_seen_len] was a prompt or output the backend processed
        self.error_: Optional[BaseException] = None
        self.error_traceback: Optional[str] = None
        self.is_finished = False
        self.spec: Optional[Speculation] = None  # speculated text not used yet (completion models)
        self.turn: Optional[ChatTurn] = None  # a deferred assistant turn (chat models)
        self.deferred: set[Any] = set()  # gens of the deferred turn
        self._scope_begin: dict[Any, int] = {}
        self._gen_span: dict[Any, tuple[int, int]] = {}  # where a gen's output sits in text_
        self._held: set[Any] = set()  # gens whose event waits for their separate_reasoning

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

    def record_error(self, err: BaseException, warn: bool = False) -> None:
        """Mutates: keeps the first error, releases every waiter; warns (SGLang does) if asked."""
        if self.error_ is None:
            self.error_ = err
            self.error_traceback = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            if warn:
                warnings.warn(f"error in an sgl program ({type(err).__name__}: {err}); state.error() keeps it\n"
                              f"{self.error_traceback}", RuntimeWarning, stacklevel=2)
        self._release_waiters()

    def get_var(self, name: Any) -> Any:
        event = self.variable_event.get(name)
        if event is not None and not event.is_set() and self._chat_spec():
            self.sync()
            if name in self.deferred:
                raise RuntimeError(f"variable {name!r} comes from API speculative execution, which answers its "
                                   "assistant turn when the turn ends; read it after the turn")
        if event is not None:
            event.wait()
        if name not in self.variables and self.error_ is not None:
            raise KeyError(f"variable {name!r} was not produced: the program failed with {self.error_!r}") \
                from self.error_
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

    def messages(self) -> list[dict[str, Any]]:
        self.sync()
        return self.messages_

    def error(self) -> Optional[BaseException]:
        self.sync()
        return self.error_

    def fork(self, size: int = 1) -> list["StreamExecutor"]:
        """size copies of this state; for size > 1 new shared text is committed (prefilled) first."""
        from jaxsgl.lang.global_config import global_config

        self.sync()
        if self.turn is not None:
            raise ValueError("cannot fork inside an assistant turn that API speculative execution defers")
        size = int(size)
        new_chars = len(self.text_) - self.engine_seen_len
        if size > 1 and global_config.enable_fork_hint and self.error_ is None \
                and new_chars >= max(1, global_config.fork_hint_min_new_chars):
            self.submit(CommitLazy())
            self.sync()
        children = []
        for _ in range(size):
            child = StreamExecutor(self.backend, self.arguments, self.default_sampling_params,
                                   self.chat_template, self.stream, self.num_api_spec_tokens)
            child.variables = dict(self.variables)
            child.meta_info = dict(self.meta_info)
            child.text_ = self.text_
            child.messages_ = list(self.messages_)
            child.images_ = list(self.images_)
            child.cur_images = list(self.cur_images)
            child.cur_role = self.cur_role
            child.cur_role_begin_pos = self.cur_role_begin_pos
            child.fork_start_text_pos = len(self.text_)
            child.engine_seen_len = self.engine_seen_len
            children.append(child)
        return children

    def wait_stream(self, predicate: Any, timeout: Optional[float] = None) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def context(self) -> PromptContext:
        """The chat messages, open role and images a chat / multimodal backend needs."""
        at_start = self.cur_role is not None and len(self.text_) == self.cur_role_begin_pos
        return PromptContext(list(self.messages_), self.cur_role, at_start, list(self.images_))

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
        except Exception as err:  # recorded (and warned), never raised into the worker loop
            self.record_error(err, warn=True)
        self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _release_waiters(self) -> None:
        for event in list(self.variable_event.values()):
            event.set()
        self._notify()

    def _init_var_events(self, expr: Any) -> None:
        names: list[Any] = []
        if isinstance(expr, (Gen, Select, VarScopeBegin)):
            names = [expr.name]
        elif isinstance(expr, SeparateReasoning):
            names = [reasoning_name(n) for n in expr.names]
        elif isinstance(expr, ExprList):
            for e in expr.exprs:
                self._init_var_events(e)
        for name in names:
            self.variable_event[name] = threading.Event()
            if self.error_ is not None or self.is_finished:
                self.variable_event[name].set()

    def _execute(self, expr: Any) -> None:
        if isinstance(expr, str):
            self._append(expr)
        elif isinstance(expr, ConstantText):
            self._append(expr.value)
        elif isinstance(expr, ExprList):
            held = {n for e in expr.exprs if isinstance(e, SeparateReasoning) for n in e.names}
            self._held |= held
            try:
                for e in expr.exprs:
                    self._execute(e)
            finally:
                self._held -= held
        elif isinstance(expr, Gen):
            self._execute_gen(expr)
        elif isinstance(expr, Select):
            self._execute_select(expr)
        elif isinstance(expr, RoleBegin):
            self._role_begin(expr.role)
        elif isinstance(expr, RoleEnd):
            self._role_end(expr.role)
        elif isinstance(expr, (Image, Video)):
            self._execute_media(expr)
        elif isinstance(expr, SeparateReasoning):
            self._separate_reasoning(expr)
        elif isinstance(expr, VarScopeBegin):
            self._no_deferred_turn("var_scope")
            self._scope_begin[expr.name] = len(self.text_)
        elif isinstance(expr, VarScopeEnd):
            self._no_deferred_turn("var_scope")
            self.variables[expr.name] = self.text_[self._scope_begin.pop(expr.name):]
            self.variable_event[expr.name].set()
        elif isinstance(expr, CommitLazy):
            self.backend.commit_lazy_operations(self.text_)
            self.engine_seen_len = len(self.text_)
        elif isinstance(expr, ConcatAndAppend):
            for state in expr.states:
                exe = state.stream_executor
                exe.sync()
                self._append(exe.text_[exe.fork_start_text_pos:])
        else:
            raise TypeError(f"cannot execute {expr!r} (expected str or an sgl expression)")

    def _append(self, value: str) -> None:
        """Mutates text_ (or the deferred turn); speculated text is used up or dropped."""
        value = str(value)
        if self.turn is not None:
            self.turn.terms.append(("text", value))
            return
        if self.spec is not None and not self.spec.consume(value):
            self.spec = None
        self.text_ += value

    def _no_deferred_turn(self, what: str) -> None:
        if self.turn is not None:
            raise ValueError(f"{what} inside an assistant turn that API speculative execution defers is not "
                             "supported")

    # ---- gen / select ----
    def _spec_completion(self, sp: SamplingParams) -> bool:
        return (self.num_api_spec_tokens is not None and not self.stream
                and self.backend.api_spec_mode == "completion" and eligible(sp))

    def _chat_spec(self) -> bool:
        return self.num_api_spec_tokens is not None and not self.stream and self.backend.api_spec_mode == "chat"

    def set_gen(self, name: Any, comp: Any, meta: Any) -> None:
        """Mutates text_, the variable, its meta_info; sets its event (unless separate_reasoning holds it)."""
        text = comp[0] if isinstance(comp, list) else comp
        self._gen_span[name] = (len(self.text_), len(text))
        self.text_ += text
        self.variables[name] = comp
        self.meta_info[name] = meta
        if name not in self._held:
            self.variable_event[name].set()

    def _execute_gen(self, expr: Gen) -> None:
        sp = expr.sampling_params.merged_over(self.default_sampling_params)
        name = expr.name
        if self.turn is not None:
            self.turn.terms.append(("gen", name, sp))
            self.deferred.add(name)
            return
        if self._spec_completion(sp):
            comp, meta = spec_gen(self, sp)
            self.set_gen(name, comp, meta)
        elif not self.stream:
            comp, meta = self.backend.generate(self.text_, sp, self.context())
            self.spec = None
            self.set_gen(name, comp, meta)
        else:
            self.spec = None
            self.variables[name] = ""
            start = len(self.text_)
            for delta, meta in self.backend.generate_stream(self.text_, sp, self.context()):
                self.text_ += delta
                self.variables[name] += delta
                self.meta_info[name] = meta
                self._notify()
            self._gen_span[name] = (start, len(self.text_) - start)
            if name not in self._held:
                self.variable_event[name].set()
        self.engine_seen_len = len(self.text_)  # prompt + output are in the engine's cache now

    def _execute_select(self, expr: Select) -> None:
        self._no_deferred_turn("select")
        decision = self.backend.select(self.text_, expr.choices, expr.temperature, expr.choices_method)
        self.variables[expr.name] = decision.decision
        self.meta_info[expr.name] = decision.meta_info
        self._gen_span[expr.name] = (len(self.text_), len(decision.decision))
        self._append(decision.decision)
        self.engine_seen_len = len(self.text_)
        if expr.name not in self._held:
            self.variable_event[expr.name].set()

    def _separate_reasoning(self, expr: SeparateReasoning) -> None:
        """Mutates each named output (answer only), its `_reasoning_content` variable and text_."""
        flush_turn(self)
        model_type = expr.model_type or model_type_for(self.backend.get_model_name())
        for name in expr.names:
            value = self.variables.get(name)
            if isinstance(value, str):
                reasoning, answer = split_reasoning(value, model_type)
                start, length = self._gen_span.get(name, (-1, 0))
                if start >= 0 and self.text_[start:start + length] == value:
                    self.text_ = self.text_[:start] + answer + self.text_[start + length:]
                self.variables[name] = answer
                self.variables[reasoning_name(name)] = reasoning
            self.variable_event[reasoning_name(name)].set()
            self.variable_event[name].set()

    def _execute_media(self, expr: Any) -> None:
        if not self.backend.supports_vision:
            raise ValueError(f"{self.backend.describe()}: the model has no vision input (it is text-only), so "
                             f"sgl.{'image' if isinstance(expr, Image) else 'video'}(...) cannot be used with it")
        part = image_part(expr.source) if isinstance(expr, Image) else video_part(expr.source, expr.num_frames)
        token = getattr(self.chat_template, "image_token", None) or "<image>"
        self._append(token)
        self.images_.append(part)
        self.cur_images.append(part)

    # ---- roles ----
    def _text_history(self) -> list[dict[str, str]]:
        """The messages as the chat template renders them (image parts stand as their text)."""
        return [{"role": m["role"], "content": message_text(m)} for m in self.messages_]

    def _role_begin(self, role: str) -> None:
        if self.chat_template is None:
            raise ValueError("role blocks (sgl.user/assistant/system) need a chat template; "
                             f"{self.backend.describe()} has none (RuntimeEndpoint: chat_template_name=, "
                             "OpenAI: chat_template=, a tokenizer directory or 'chatml')")
        if self.cur_role is not None:
            raise ValueError(f"nested roles are not allowed ({role!r} inside {self.cur_role!r})")
        prefix, _ = self.chat_template.get_prefix_and_suffix(role, self._text_history())
        self._append(prefix)
        self.cur_role = role
        self.cur_role_begin_pos = len(self.text_)
        if role == "assistant" and self._chat_spec():
            self.turn = ChatTurn(list(self.messages_))

    def _role_end(self, role: str) -> None:
        if self.cur_role != role:
            raise ValueError(f"role end {role!r} does not match the open role {self.cur_role!r}")
        flush_turn(self)
        content = self.text_[self.cur_role_begin_pos:]
        _, suffix = self.chat_template.get_prefix_and_suffix(role, self._text_history())
        self._append(suffix)
        token = getattr(self.chat_template, "image_token", None) or "<image>"
        self.messages_.append(message_with_parts(role, content, self.cur_images, token))
        self.cur_images = []
        self.cur_role = None
        self.cur_role_begin_pos = None
