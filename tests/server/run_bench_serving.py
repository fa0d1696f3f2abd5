"""Run `python -m sglang.bench_serving ARGS` unmodified, minus two server-side imports it drags in.

sglang 0.5.23's benchmark client imports `sglang.srt.disaggregation.utils` for one constant
(FAKE_BOOTSTRAP_HOST), which pulls in SGLang's whole GPU runtime (tvm_ffi, torchvision, ...), and
`datasets` for the MMMU dataset (hub only). Both are stubbed here; the request, streaming and
metrics code of bench_serving runs as shipped.
"""
from __future__ import annotations

import runpy
import sys
import types


def _stub_server_imports() -> None:
    disagg = types.ModuleType("sglang.srt.disaggregation.utils")
    disagg.FAKE_BOOTSTRAP_HOST = "2.2.2.2"  # type: ignore[attr-defined]
    sys.modules[disagg.__name__] = disagg
    if "datasets" not in sys.modules:
        try:
            import datasets  # noqa: F401
        except ImportError:
            ds = types.ModuleType("datasets")

            def load_dataset(*args: object, **kwargs: object) -> None:
                raise RuntimeError("datasets is not installed (no hub access in tests)")

            ds.load_dataset = load_dataset  # type: ignore[attr-defined]
            sys.modules["datasets"] = ds


if __name__ == "__main__":
    _stub_server_imports()
    sys.argv = ["sglang.bench_serving", *sys.argv[1:]]
    runpy.run_module("sglang.bench_serving", run_name="__main__", alter_sys=True)
