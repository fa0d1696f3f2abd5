"""Find a program's constant prefix by running it on placeholder arguments.

The trace appends text and role markers until the program first needs something that is not
constant (an argument's value, a gen/select result, a fork); what it rendered until then is the
prefix every call of the program shares, which run_batch pre-caches once.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

from jaxsgl.lang.chat_template import ChatTemplate
from jaxsgl.lang.ir import Argument, ConstantText, Expr, ExprList, RoleBegin, RoleEnd, RoleMethods


class StopTracing(Exception):
    """The program reached something that is not constant."""


class TracerState(RoleMethods):
    """A stand-in for ProgramState that only records the constant prefix."""

    def __init__(self, chat_template: Optional[ChatTemplate]):
        self.chat_template = chat_template
        self.prefix = ""
        self.messages_: list[dict[str, str]] = []
        self.cur_role: Optional[str] = None
        self.role_begin = 0

    def __iadd__(self, other: Any) -> "TracerState":
        self._trace(other)
        return self

    def _trace(self, expr: Any) -> None:
        if isinstance(expr, str):
            self.prefix += expr
        elif isinstance(expr, ConstantText):
            self.prefix += expr.value
        elif isinstance(expr, ExprList):
            for e in expr.exprs:
                self._trace(e)
        elif isinstance(expr, RoleBegin) and self.chat_template is not None and self.cur_role is None:
            head, _ = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
            self.prefix += head
            self.cur_role, self.role_begin = expr.role, len(self.prefix)
        elif isinstance(expr, RoleEnd) and self.chat_template is not None and self.cur_role == expr.role:
            content = self.prefix[self.role_begin:]
            _, tail = self.chat_template.get_prefix_and_suffix(expr.role, self.messages_)
            self.prefix += tail
            self.messages_.append({"role": expr.role, "content": content})
            self.cur_role = None
        else:
            raise StopTracing()

    def _role(self, role: str, expr: Optional[Any] = None) -> Any:
        if expr is not None:
            self._trace(ExprList([RoleBegin(role), expr if isinstance(expr, Expr) else ConstantText(expr),
                                  RoleEnd(role)]))
            return None

        @contextmanager
        def scope() -> Iterator[None]:
            self._trace(RoleBegin(role))
            yield
            self._trace(RoleEnd(role))

        return scope()

    def __getattr__(self, name: str) -> Any:  # fork, text, var_scope, ...: not constant
        raise StopTracing()

    def __getitem__(self, name: Any) -> Any:
        raise StopTracing()


def extract_prefix_by_tracing(program: Any, chat_template: Optional[ChatTemplate]) -> str:
    """The text a program renders before it first depends on its arguments or the model."""
    arguments = {name: Argument(name) for name in program.arg_names}
    arguments.update(program.bind_arguments)
    tracer = TracerState(chat_template)
    try:
        program.func(tracer, **arguments)
    except Exception:  # StopTracing, or the program touched a placeholder argument
        pass
    return tracer.prefix
