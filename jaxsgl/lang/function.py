"""`@sgl.function` programs: run one, run a batch concurrently, trace the constant prefix."""
from __future__ import annotations

import inspect
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from jaxsgl.lang.backend.runtime import as_backend
from jaxsgl.lang.global_config import global_config
from jaxsgl.lang.interpreter import StreamExecutor
from jaxsgl.lang.ir import SamplingParams, run_defaults
from jaxsgl.lang.state import ProgramState
from jaxsgl.lang.tracer import extract_prefix_by_tracing

_SAMPLING_ARGS = ("max_new_tokens", "stop", "stop_token_ids", "temperature", "top_p", "top_k", "min_p",
                  "frequency_penalty", "presence_penalty", "ignore_eos", "return_logprob", "logprob_start_len",
                  "top_logprobs_num", "return_text_in_logprobs")


class SglFunction:
    """A program: a Python function whose first argument is the state `s`."""

    def __init__(self, func: Callable[..., Any], num_api_spec_tokens: Optional[int] = None,
                 bind_arguments: Optional[dict[str, Any]] = None):
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.bind_arguments = dict(bind_arguments or {})
        spec = inspect.getfullargspec(func)
        if not spec.args or spec.args[0] != "s":
            raise ValueError(f"the first argument of an sgl.function must be named 's' ({func.__name__})")
        self.arg_names = spec.args[1:]
        self.arg_defaults = spec.defaults or ()
        self.__name__ = getattr(func, "__name__", "sgl_function")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> "SglFunction":
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise ValueError(f"{self.__name__} has no arguments {sorted(unknown)}")
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def run(self, *args: Any, max_new_tokens: int = 128, stop: Union[str, Sequence[str]] = (),
            stop_token_ids: Sequence[int] = (), temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1,
            min_p: float = 0.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
            ignore_eos: bool = False, return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
            top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
            stream: bool = False, backend: Any = None, **kwargs: Any) -> ProgramState:
        """Run the program; returns its state at once (variables are waited for when read)."""
        defaults = run_defaults(max_new_tokens, stop, stop_token_ids, temperature, top_p, top_k, min_p,
                                frequency_penalty, presence_penalty, ignore_eos, return_logprob,
                                logprob_start_len, top_logprobs_num, return_text_in_logprobs)
        return run_program(self, backend, args, kwargs, defaults, stream)

    def run_batch(self, batch_kwargs: Sequence[Any], *, max_new_tokens: int = 128,
                  stop: Union[str, Sequence[str]] = (), stop_token_ids: Sequence[int] = (),
                  temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
                  frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
                  return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
                  top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
                  backend: Any = None, num_threads: Union[str, int] = "auto",
                  progress_bar: bool = False, generator_style: bool = False) -> Any:
        """Run the program once per kwargs dict (or positional tuple), concurrently; states in order
        (generator_style: an iterator yielding each state, in order, as soon as it is done)."""
        if not isinstance(batch_kwargs, (list, tuple)):
            raise TypeError("run_batch takes a list of argument dicts")
        if not batch_kwargs:
            return []
        batch = [self._as_kwargs(x) for x in batch_kwargs]
        defaults = run_defaults(max_new_tokens, stop, stop_token_ids, temperature, top_p, top_k, min_p,
                                frequency_penalty, presence_penalty, ignore_eos, return_logprob,
                                logprob_start_len, top_logprobs_num, return_text_in_logprobs)
        return run_program_batch(self, backend, batch, defaults, num_threads, progress_bar, generator_style)

    def _as_kwargs(self, x: Any) -> dict[str, Any]:
        if isinstance(x, dict):
            return dict(x)
        if isinstance(x, (list, tuple)):
            lo, hi = len(self.arg_names) - len(self.arg_defaults), len(self.arg_names)
            if not lo <= len(x) <= hi:
                raise ValueError(f"{self.__name__} takes {lo}..{hi} arguments, got {len(x)}")
            return dict(zip(self.arg_names, x))
        raise TypeError(f"run_batch items must be dicts or tuples, got {type(x).__name__}")

    def trace_prefix(self, backend: Any = None) -> str:
        """The constant text every call of this program starts with."""
        be = as_backend(backend or global_config.default_backend)
        return extract_prefix_by_tracing(self, be.get_chat_template())

    def cache(self, backend: Any = None) -> str:
        """Pre-cache the traced constant prefix in the backend; returns it."""
        be = as_backend(backend or global_config.default_backend)
        return cache_program(self, be)

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        return self.run(*args, **kwargs)


def _run_internal(state: ProgramState, program: SglFunction, args: Sequence[Any], kwargs: dict[str, Any],
                  sync: bool, reraise: bool, warn: bool = False) -> None:
    """Run the body; an exception in it is recorded on the state and, if reraise, raised (SGLang's run())."""
    exe = state.stream_executor
    try:
        state.ret_value = program.func(state, *args, **kwargs)
    except Exception as err:
        exe.sync()
        exe.record_error(err, warn=warn)
        if reraise:
            raise
    finally:
        exe.end()
    if sync:
        exe.sync()


def run_program(program: SglFunction, backend: Any, args: Sequence[Any], kwargs: dict[str, Any],
                defaults: SamplingParams, stream: bool, sync: bool = False, reraise: bool = True) -> ProgramState:
    """Start one program; with stream=True its body runs on a thread and the state returns at once.

    An exception in the body is raised here (not with stream=True: it is recorded and warned about);
    a failing backend call is warned about and kept in state.error(), as SGLang does."""
    be = as_backend(backend or global_config.default_backend)
    kwargs = {**kwargs, **program.bind_arguments}
    exe = StreamExecutor(be, kwargs, defaults, be.get_chat_template(), stream, program.num_api_spec_tokens)
    state = ProgramState(exe)
    if stream:
        threading.Thread(target=_run_internal, args=(state, program, args, kwargs, sync, False, True),
                         daemon=True).start()
    else:
        _run_internal(state, program, args, kwargs, sync, reraise)
    return state


def cache_program(program: SglFunction, backend: Any) -> str:
    """Trace the program's constant prefix and, if long enough, pre-cache it in the backend."""
    prefix = extract_prefix_by_tracing(program, backend.get_chat_template())
    if len(prefix) > global_config.precache_min_chars:
        backend.cache_prefix(prefix)
        return prefix
    return ""


def run_program_batch(program: SglFunction, backend: Any, batch: list[dict[str, Any]], defaults: SamplingParams,
                      num_threads: Union[str, int], progress_bar: bool, generator_style: bool = False) -> Any:
    """Run every program concurrently (a thread each, up to num_threads) after pre-caching the prefix."""
    be = as_backend(backend or global_config.default_backend)
    if global_config.enable_precache_with_tracing and len(batch) > 1:
        cache_program(program, be)
    if num_threads == "auto":
        num_threads = max(96, (os.cpu_count() or 1) * 16)
    num_threads = max(1, min(int(num_threads), len(batch)))
    bar = _progress(len(batch)) if progress_bar else None

    def one(kwargs: dict[str, Any]) -> ProgramState:
        state = run_program(program, be, (), kwargs, defaults, stream=False, sync=True, reraise=False)
        if bar is not None:
            bar.update(1)
        return state

    if generator_style:
        return _in_order(one, batch, num_threads, bar)
    try:
        if num_threads == 1:
            states = [one(kw) for kw in batch]
        else:
            with ThreadPoolExecutor(num_threads, thread_name_prefix="sgl-batch") as pool:
                states = list(pool.map(one, batch))
    finally:
        if bar is not None:
            bar.close()
    _report_failures(states)
    return states


def _in_order(one: Callable[[dict[str, Any]], ProgramState], batch: list[dict[str, Any]], num_threads: int,
              bar: Any) -> Iterator[ProgramState]:
    """run_batch(generator_style=True): every program submitted at once, states yielded in order."""
    states = []
    try:
        with ThreadPoolExecutor(num_threads, thread_name_prefix="sgl-batch") as pool:
            for future in [pool.submit(one, kw) for kw in batch]:
                states.append(future.result())
                yield states[-1]
    finally:
        if bar is not None:
            bar.close()
    _report_failures(states)


def _report_failures(states: list[ProgramState]) -> None:
    """One warning naming every failed program of a batch (each state keeps its error)."""
    failed = [(i, s.stream_executor.error_) for i, s in enumerate(states) if s.stream_executor.error_ is not None]
    if failed:
        shown = "; ".join(f"#{i}: {type(e).__name__}: {e}" for i, e in failed[:8])
        more = f"; ... and {len(failed) - 8} more" if len(failed) > 8 else ""
        warnings.warn(f"run_batch: {len(failed)} of {len(states)} programs failed ({shown}{more}); the others "
                      "completed, and each failed state keeps its error (state.error())", RuntimeWarning, stacklevel=3)


class _NoBar:
    def __init__(self, total: int):
        self.total, self.n = total, 0

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total)
    except ImportError:
        return _NoBar(total)
