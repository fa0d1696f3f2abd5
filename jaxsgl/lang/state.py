"""ProgramState (the `s` a program receives) and ProgramStateGroup (what `s.fork(n)` returns)."""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator, Optional

from jaxsgl.lang.interpreter import StreamExecutor
from jaxsgl.lang.ir import (ConcatAndAppend, Expr, ExprList, RoleBegin, RoleEnd, RoleMethods, VarScopeBegin,
                            VarScopeEnd, _as_expr)


class ProgramState(RoleMethods):
    """The state of one running program: append with `+=`, read with `s["var"]`, `s.text()`."""

    def __init__(self, stream_executor: StreamExecutor):
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    # ---- building ----
    def __iadd__(self, other: Any) -> "ProgramState":
        if other is None:
            raise ValueError("tried to append None to a program state")
        if not isinstance(other, (str, Expr)):
            raise TypeError(f"cannot append {type(other).__name__} to a program state (str or sgl expression)")
        self.stream_executor.submit(other)
        return self

    def _role(self, role: str, expr: Optional[Any] = None) -> Any:
        if expr is not None:
            block = ExprList([RoleBegin(role), _as_expr(expr), RoleEnd(role)])
            self.stream_executor.submit(block)
            return block

        @contextmanager
        def scope() -> Iterator[None]:
            self.stream_executor.submit(RoleBegin(role))
            yield
            self.stream_executor.submit(RoleEnd(role))

        return scope()

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """Everything appended inside the block becomes variable `name`."""
        self.stream_executor.submit(VarScopeBegin(name))
        yield
        self.stream_executor.submit(VarScopeEnd(name))

    def fork(self, size: int = 1, position_ids_offset: Optional[list[int]] = None) -> "ProgramStateGroup":
        """size branches that continue from here; join them with `.join()`."""
        children = self.stream_executor.fork(size)
        return ProgramStateGroup([ProgramState(c) for c in children], self)

    @contextmanager
    def copy(self, position_ids_offset: Optional[list[int]] = None) -> Iterator["ProgramState"]:
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # ---- reading ----
    def text(self) -> str:
        return self.stream_executor.text()

    def messages(self) -> list[dict[str, str]]:
        return self.stream_executor.messages()

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> Optional[BaseException]:
        """The exception the program raised (in its body or in a backend call), or None."""
        return self.stream_executor.error()

    def get_var(self, name: Any) -> Any:
        return self.stream_executor.get_var(name)

    def set_var(self, name: Any, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: Any) -> Any:
        return self.stream_executor.get_meta_info(name)

    def __getitem__(self, name: Any) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: Any, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: Any) -> bool:
        return name in self.stream_executor.variables

    def _next_piece(self, prev: int, var_name: Optional[str], timeout: Optional[float]) -> tuple[str, bool]:
        """(text after prev, finished) of the whole text or one variable, waiting up to timeout for news."""
        exe = self.stream_executor
        if var_name is None:
            def ready() -> bool:
                return len(exe.text_) > prev or exe.is_finished
            exe.wait_stream(ready, timeout)
            done = exe.is_finished
            return exe.text_[prev:], done

        def var_ready() -> bool:
            value = exe.variables.get(var_name)
            return (isinstance(value, str) and len(value) > prev) or _var_done(exe, var_name)
        exe.wait_stream(var_ready, timeout)
        done = _var_done(exe, var_name)
        value = exe.variables.get(var_name, "")
        return (value[prev:] if isinstance(value, str) else ""), done

    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        """Yield new text as it is generated (the whole text, or one variable's)."""
        if not self.stream_executor.stream:
            yield self.text() if var_name is None else self.get_var(var_name)
            return
        prev = 0
        while True:
            out, done = self._next_piece(prev, var_name, None)
            prev += len(out)
            if out:
                yield out
            if done:
                return

    async def text_async_iter(self, var_name: Optional[str] = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        """Async text_iter (SGLang's): new text as it arrives; with return_meta_data and a variable,
        (text, meta_info) pairs whose meta_info is the gen's so far (cumulative `output_token_logprobs`
        when it asked for return_logprob)."""
        loop = asyncio.get_running_loop()
        exe = self.stream_executor
        if not exe.stream:
            if var_name is None:
                yield await loop.run_in_executor(None, self.text)
                return
            value = await loop.run_in_executor(None, self.get_var, var_name)
            yield (value, exe.meta_info.get(var_name)) if return_meta_data else value
            return
        prev = 0
        while True:
            out, done = await loop.run_in_executor(None, self._next_piece, prev, var_name, 1.0)
            prev += len(out)
            if out:
                meta = exe.meta_info.get(var_name) if var_name is not None else None
                yield (out, meta) if return_meta_data and var_name is not None else out
            if done:
                return

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"

    def __del__(self) -> None:
        try:
            self.stream_executor.end()
        except Exception:
            pass


def _var_done(exe: StreamExecutor, name: str) -> bool:
    event = exe.variable_event.get(name)
    if event is not None:
        return event.is_set()
    return exe.is_finished


class ProgramStateGroup:
    """The branches of a fork: `forks += expr`, `forks[i]`, `forks.join()`."""

    def __init__(self, states: list[ProgramState], src_state: Optional[ProgramState] = None):
        self.states = states
        self.src_state = src_state

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for every branch. gather_variable: each new variable becomes a list in the source
        state, one item per branch. concate_and_append: append each branch's new text to the source."""
        if mode == "gather_variable":
            src = self.src_state.stream_executor
            before = set(src.variables)
            for child in self.states:
                exe = child.stream_executor
                exe.sync()
                for key in exe.variables:
                    if key in before:
                        continue
                    src.variables.setdefault(key, []).append(exe.variables[key])
                if exe.error_ is not None and src.error_ is None:
                    src.record_error(exe.error_)
        elif mode == "concate_and_append":
            self.src_state += ConcatAndAppend(self.states)
            self.src_state.stream_executor.sync()
        else:
            raise ValueError(f"invalid join mode {mode!r} (gather_variable or concate_and_append)")
        for child in self.states:
            child.stream_executor.end()

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __setitem__(self, i: int, value: Any) -> None:
        """Completes `forks[i] += expr` (Python stores the result back); replacing a branch is an error."""
        if value is not self.states[i]:
            raise TypeError("forks[i] = x would replace a branch; extend it with forks[i] += expr")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> "ProgramStateGroup":
        if isinstance(other, (str, Expr)):
            for s in self.states:
                s += other
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} items for {len(self.states)} forks")
            for s, x in zip(self.states, other):
                s += x
        elif callable(other):
            for i, s in enumerate(self.states):
                s += other(i)
        else:
            raise TypeError(f"cannot append {type(other).__name__} to forks")
        return self

