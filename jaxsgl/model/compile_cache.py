"""JAX's persistent compilation cache, kept beside the converted checkpoints, and an executable
cache for the model step on top of it.

With JAX's cache a second start reuses the compiled step functions instead of recompiling
every layer (seconds on a CPU, more on a GPU). But JAX finds its entry by the lowered program,
so every start still traces the step (30 unrolled layers) and lowers it to MLIR: about 2 s of
a CPU start. `persistent_jit` keeps the compiled executable itself on disk (JAX's
`serialize_executable`), keyed by everything the program is made from: the jaxsgl sources, the
jax/jaxlib versions, the backend and its devices, jax's configuration, XLA_FLAGS and jaxsgl's own
environment settings that change tracing (traced_environment), the function
with its bound (static) arguments, and the argument shapes and dtypes. A later process calls
that executable directly: no tracing, no lowering.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax

from jaxsgl.model.gguf_convert import cache_root

log = logging.getLogger(__name__)
_FORMAT = 1  # bump when what an entry holds changes
EXECUTABLES_DIR = "jaxsgl-executables"  # under jax_compilation_cache_dir
# The executable cache is on for the CPU and, since session 17's H200 measurement (8B warm start 9.9 s on the
# Hopper path, 10.0 s on the Triton one, the same greedy tokens as a compiled start), for a GPU: Triton kernels
# inside serialized executables load; Mosaic GPU ones load with their runtime library found (mosaic_gpu_runtime).
# JAXSGL_GPU_EXECUTABLE_CACHE=0 turns it off on a GPU (then only JAX's own cache is used).
GPU_EXECUTABLE_CACHE_ENV = "JAXSGL_GPU_EXECUTABLE_CACHE"
# Where a loaded Mosaic GPU kernel's host launcher finds mosaic_gpu_launch_kernel / mosaic_gpu_init_tma_desc.
MOSAIC_GPU_RUNTIME_ENV = "MOSAIC_GPU_RUNTIME_LIB_PATH"


def executable_cache_allowed(backend: str | None = None) -> bool:
    """Whether executables are kept on disk on this backend: the CPU always, a GPU unless
    $JAXSGL_GPU_EXECUTABLE_CACHE=0, nothing else."""
    backend = backend or jax.default_backend()
    return backend == "cpu" or (backend == "gpu" and os.environ.get(GPU_EXECUTABLE_CACHE_ENV, "1") != "0")


def enable_compilation_cache() -> None:
    """Point jax_compilation_cache_dir at $JAXSGL_CACHE/xla (unless the user set one)."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@functools.lru_cache(maxsize=1)
def _sources_fingerprint() -> str:
    """A hash of every jaxsgl source file: any code change makes new keys."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


# jaxsgl's environment settings that change what a step traces to (model/forward.py, kernels/): part of an
# executable's key, so a process with another value does not load this one's executables. A new JAXSGL_*
# variable read by the traced code belongs here (tests/model/test_start_caches.py checks those modules).
TRACED_ENV = ("JAXSGL_FUSED_ADD_NORM", "JAXSGL_FUSED_DECODE", "JAXSGL_MATMUL_OUTPUT", "JAXSGL_MAX_SPLITS",
              "JAXSGL_MIN_SPLIT_TOKENS")


def traced_environment() -> list[tuple[str, str]]:
    """The TRACED_ENV variables set in this process, as (name, value) pairs."""
    return [(k, os.environ[k]) for k in TRACED_ENV if k in os.environ]


def _environment_key() -> str:
    import jaxlib

    devices = jax.devices()
    client = devices[0].client
    config = sorted((k, repr(v)) for k, v in jax.config.values.items())
    return repr((_FORMAT, _sources_fingerprint(), jax.__version__, getattr(jaxlib, "__version__", None),
                 client.platform, client.platform_version, [(d.id, d.device_kind) for d in devices],
                 jax.process_index(), config, os.environ.get("XLA_FLAGS"), os.environ.get("LIBTPU_INIT_ARGS"),
                 traced_environment()))


_HIT, _MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
_events = threading.local()  # this thread's counts of JAX's compilation-cache events
_listening = False


def _compile_events() -> dict[str, int]:
    """This thread's running counts of JAX's cache hits and misses (a miss is recorded when a fresh
    compile is written to the cache)."""
    global _listening
    if not _listening:
        def listen(event: str, **_: Any) -> None:
            if event in (_HIT, _MISS):
                counts = _compile_events_here()
                counts[event] = counts.get(event, 0) + 1

        jax.monitoring.register_event_listener(listen)
        _listening = True
    return _compile_events_here()


def _compile_events_here() -> dict[str, int]:
    if not hasattr(_events, "counts"):
        _events.counts = {}
    return _events.counts


def _arg_key(x: Any) -> tuple:
    """What an argument's executable depends on, with one device (a hashable tuple, cheap to make)."""
    if isinstance(x, jax.Array):  # committed, and where it lives (device or page-locked host memory)
        return x.shape, x.dtype, x.weak_type, (x.committed, x.sharding.memory_kind)
    aval = jax.typeof(x)
    return aval.shape, aval.dtype, aval.weak_type, None


class PersistentJit:
    """jax.jit(fn, donate_argnums=..., static_argnames=..., compiler_options=...) whose executables
    are also kept on disk (see the module docstring). Called like the jitted function, static
    arguments by keyword.

    Entries go to `<jax_compilation_cache_dir>/jaxsgl-executables`, written only after a fresh
    compile that JAX wrote to its own cache (so under JAX's policy: at least
    jax_persistent_cache_min_compile_time_secs): an executable that JAX loaded from its cache loses
    code when serialized again (jaxlib 0.10, CPU: "Function ... not found" when run), so a step
    that JAX's cache already holds, but this one does not (a cache from before this one existed,
    or a source edit that left the program unchanged), keeps being traced, lowered and loaded from
    JAX's cache. Without a compilation cache directory, with more than one device, on a backend
    other than the CPU or a GPU, or on a GPU with $JAXSGL_GPU_EXECUTABLE_CACHE=0, it is exactly the
    jitted function (on a GPU, executables with Triton kernels load and run; those with Mosaic GPU
    kernels load only with their runtime library found, and are not written without it, see
    mosaic_gpu_runtime).
    `fn` should be a functools.partial whose keywords are part of the key (their repr)."""

    def __init__(self, fn: Callable, *, donate_argnums: tuple[int, ...] = (),
                 static_argnames: tuple[str, ...] = (), compiler_options: dict[str, Any] | None = None) -> None:
        self._jit = jax.jit(fn, donate_argnums=donate_argnums, static_argnames=static_argnames,
                            compiler_options=compiler_options)
        base = fn.func if isinstance(fn, functools.partial) else fn
        bound = sorted(fn.keywords.items()) if isinstance(fn, functools.partial) else []
        options = sorted((compiler_options or {}).items())
        self._fn_key = repr((f"{base.__module__}.{base.__qualname__}", bound, donate_argnums, static_argnames,
                             options))
        self._static_argnames = static_argnames
        self._compiled: dict[Any, Any] = {}

    def _cache_size(self) -> int:
        return self._jit._cache_size() + len(self._compiled)

    def _persistent(self, static: dict) -> bool:
        backend_ok = executable_cache_allowed()
        return bool(jax.config.jax_compilation_cache_dir and jax.device_count() == 1 and backend_ok
                    and not set(static) - set(self._static_argnames))

    @staticmethod
    def _signature(args: tuple, static: dict) -> tuple:
        """What tells this call's executable apart among this function's (cheap: every call makes one)."""
        leaves, treedef = jax.tree_util.tree_flatten(args)
        return tuple(sorted(static.items())), treedef, tuple(map(_arg_key, leaves))

    def _path(self, sig: tuple) -> Path:
        """The executable cache's file for a signature (hashes the whole environment: on a miss only)."""
        key = repr((_environment_key(), self._fn_key, sig[0], str(sig[1]),
                    [(tuple(shape), str(dtype), weak, committed) for shape, dtype, weak, committed in sig[2]]))
        directory = Path(jax.config.jax_compilation_cache_dir) / EXECUTABLES_DIR
        return directory / (hashlib.sha256(key.encode()).hexdigest() + ".pkl")

    def _executable(self, args: tuple, static: dict) -> Any:
        """The executable of this call: remembered, else loaded or compiled (_build)."""
        sig = self._signature(args, static)
        compiled = self._compiled.get(sig)
        return compiled if compiled is not None else self._build(sig, self._path(sig), args, static, None)

    def _build(self, sig: tuple, path: Path, args: tuple, static: dict, lowered: Any) -> Any:
        """Load the executable at path, or compile it (from `lowered` when given, which means the file
        was not there); remembers it (mutates self._compiled)."""
        compiled = self._load(path) if lowered is None else None
        if compiled is None:
            compiled = self._compile(path, lowered if lowered is not None else self._jit.lower(*args, **static))
        return self._compiled.setdefault(sig, compiled)

    def __call__(self, *args: Any, **static: Any) -> Any:
        if not self._persistent(static):
            return self._jit(*args, **static)
        return self._executable(args, static)(*args)

    def precompile(self, *args: Any, **static: Any) -> None:
        """Compile (or load) the executable a call with these arguments would run, without running
        it: a later call finds it (jax.jit reuses an ahead-of-time compile of the same signature)."""
        self.lower(*args, **static)()

    def lower(self, *args: Any, **static: Any) -> Callable[[], None]:
        """Trace and lower now (unless the executable cache holds this executable: then nothing);
        returns the thunk that compiles or loads the executable, which is thread-safe and runs XLA
        without the GIL. Warm-up lowers every variant on one thread in a fixed order and compiles them
        on several: lowering Mosaic GPU kernels on several threads at once gives their serialized
        modules a different hash in each process, so JAX's persistent cache missed."""
        if not self._persistent(static):
            lowered = self._jit.lower(*args, **static)

            def compile_lowered() -> None:
                lowered.compile()
            return compile_lowered
        sig = self._signature(args, static)
        if sig in self._compiled:
            return lambda: None
        path = self._path(sig)
        lowered = None if path.exists() else self._jit.lower(*args, **static)
        if lowered is None and jax.default_backend() == "gpu":
            mosaic_gpu_runtime()  # here, before the pool's threads load (setenv beside getenv in C races)

        def load_or_compile() -> None:  # (an entry that fails to load is lowered here, off this thread: rare)
            self._build(sig, path, args, static, lowered)
        return load_or_compile

    @staticmethod
    def _load(path: Path) -> Any | None:
        """The executable stored at path, or None (none there, or it cannot be loaded here)."""
        from jax.experimental import serialize_executable as se

        if jax.default_backend() == "gpu":
            mosaic_gpu_runtime()  # before any Mosaic GPU kernel is linked in this process
        try:
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                payload, in_tree, out_tree = pickle.load(f)
            t1 = time.perf_counter()
            compiled = se.deserialize_and_load(payload, in_tree, out_tree)
            log.debug("loaded executable %s in %.2fs (read %.2fs)", path.name, time.perf_counter() - t0, t1 - t0)
            return compiled
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - a stale or damaged entry: compile again and replace it
            log.warning("ignoring the cached executable %s (%s: %s)", path, type(e).__name__, e)
            return None

    @staticmethod
    def _compile(path: Path, lowered: Any) -> Any:
        """Compile `lowered`; keep the executable at path when it was a fresh compile that can be
        serialized (writes the executable cache, through JAX's cache)."""
        from jax.experimental import serialize_executable as se

        events = _compile_events()
        before = dict(events)
        compiled = lowered.compile()
        fresh = events.get(_MISS, 0) > before.get(_MISS, 0) and events.get(_HIT, 0) == before.get(_HIT, 0)
        if fresh and unserializable_kernels(lowered):
            log.debug("not caching the executable %s: it calls a kernel that does not load in another process",
                      path.name)
        elif fresh:  # compiled here and written to JAX's cache
            try:
                data = pickle.dumps(se.serialize(compiled))
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)  # atomic: concurrent starts read a whole entry or none
            except Exception as e:  # noqa: BLE001 - not serializable here, or a read-only cache
                log.debug("not caching the executable %s: %s: %s", path.name, type(e).__name__, e)
        return compiled


# Custom calls whose serialized executables do not load in another process without their runtime
# library. A Mosaic GPU kernel's executable carries its host launcher as object code, linked again on load
# against the library named by $MOSAIC_GPU_RUNTIME_LIB_PATH; jax sets that variable only when
# jax.experimental.mosaic.gpu is imported, which a process that loads instead of lowering never does
# (jax 0.11.2 on the H200: "Failed to lookup host symbol ... kernel_mosaic_gpu"). mosaic_gpu_runtime() sets it.
NEEDS_RUNTIME_LIBRARY = ("mosaic_gpu",)


def mosaic_gpu_runtime() -> str | None:
    """The Mosaic GPU runtime library, as jax.experimental.mosaic.gpu finds it on import, without
    importing that module (MLIR dialects, absl): sets $MOSAIC_GPU_RUNTIME_LIB_PATH when unset (mutates
    os.environ). None where jaxlib has no Mosaic GPU (CPU builds)."""
    if os.environ.get(MOSAIC_GPU_RUNTIME_ENV):
        return os.environ[MOSAIC_GPU_RUNTIME_ENV]
    try:
        from jax._src.lib import mosaic_gpu as mosaic_gpu_lib  # the bindings, found as jax finds them
        path = Path(mosaic_gpu_lib._mosaic_gpu_ext.__file__).parent / "libmosaic_gpu_runtime.so"
    except (ImportError, AttributeError):
        return None
    if not path.is_file():
        return None
    os.environ[MOSAIC_GPU_RUNTIME_ENV] = str(path)
    return str(path)


def unserializable_kernels(lowered: Any) -> bool:
    """Whether a lowered GPU program calls a kernel whose serialized executable would not load in
    another process: one of NEEDS_RUNTIME_LIBRARY when mosaic_gpu_runtime() finds no library (reads the
    program's text: on the GPU only, where such kernels exist)."""
    if jax.default_backend() != "gpu":
        return False
    needs = any(t.startswith(NEEDS_RUNTIME_LIBRARY) for t in custom_call_targets(lowered.as_text()))
    return needs and mosaic_gpu_runtime() is None


# A custom call in MLIR text: `stablehlo.custom_call @target(...)` as printed, `call_target_name = "target"`
# in the generic form.
_CUSTOM_CALL = re.compile(r'custom_call @([\w.$-]+)|call_target_name = "([^"]+)"')


def custom_call_targets(mlir_text: str) -> set[str]:
    """The custom-call targets (kernels, library calls) that a lowered program's text calls."""
    return {a or b for a, b in _CUSTOM_CALL.findall(mlir_text)}


def persistent_jit(fn: Callable, *, donate_argnums: tuple[int, ...] = (), static_argnames: tuple[str, ...] = (),
                   compiler_options: dict[str, Any] | None = None) -> PersistentJit:
    """PersistentJit(...); compiler_options: XLA options of this function's compiles (part of the key)."""
    return PersistentJit(fn, donate_argnums=donate_argnums, static_argnames=static_argnames,
                         compiler_options=compiler_options)
