"""One host->device and one device->host transfer per step.

Every per-step array (StepInput and SamplingInput fields: int32, uint32, float32, bool)
but the page table (ModelRunner sends it on its own, as narrow as the batch allows, and
pads it on the device) is viewed as int32 and concatenated into one flat buffer; the
jitted step slices it apart again by a static layout. Outputs travel back the same way. On the H100 this
replaced ~20 small transfers per step (docs/perf.md, "Engine").

Each input array starts at a multiple of ALIGN int32s (256 bytes): XLA may hand a slice of
the buffer to a kernel as a view, and the Mosaic GPU kernel rejects an operand that is not
256-byte aligned ("Input buffer 4 is not 256-byte aligned": the page table, when it sat at
an odd offset).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Layout = tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype name) per array

_AS_INT32 = {"int32", "uint32", "float32"}
ALIGN = 64  # int32s: every input array's offset in the packed buffer is a multiple of 256 bytes


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, Layout]:
    """Concatenate arrays into one int32 buffer; the layout (static) says how to cut it.
    Written field by field into one zeroed buffer (np.pad per field was a quarter of the engine
    loop's host time at batch 256)."""
    flats, layout, total = [], [], 0
    for name, a in arrays.items():
        a = np.asarray(a)
        dt = a.dtype.name
        if dt == "bool":
            flat = a.reshape(-1)
        elif dt in _AS_INT32:
            flat = np.ascontiguousarray(a).view(np.int32).reshape(-1)
        else:
            raise TypeError(f"cannot pack {name} of dtype {dt}")
        flats.append((total, flat))
        layout.append((name, tuple(a.shape), dt))
        total += _padded(flat.size)
    out = np.zeros(total, np.int32)
    for off, flat in flats:
        out[off:off + flat.size] = flat  # bool -> 0 / 1
    return out, tuple(layout)


def unpack(flat: jax.Array, layout: Layout) -> dict[str, jax.Array]:
    """Inverse of pack, inside jit: static slices of the int32 buffer, bit-cast back."""
    out, off = {}, 0
    for name, shape, dt in layout:
        n = math.prod(shape)
        x = flat[off:off + n].reshape(shape)
        off += _padded(n)
        if dt == "bool":
            x = x != 0
        elif dt != "int32":
            x = jax.lax.bitcast_convert_type(x, jnp.dtype(dt))
        out[name] = x
    return out


def pack_device(arrays: dict[str, Any]) -> tuple[jax.Array, Layout]:
    """pack() for traced arrays (inside jit), for the outputs' trip back."""
    parts, layout = [], []
    for name, a in arrays.items():
        if a is None:
            continue
        dt = jnp.dtype(a.dtype).name
        flat = a.astype(jnp.int32) if dt == "bool" else jax.lax.bitcast_convert_type(a, jnp.int32)
        parts.append(flat.ravel())
        layout.append((name, tuple(a.shape), dt))
    return jnp.concatenate(parts), tuple(layout)


def unpack_host(flat: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Inverse of pack_device on the host (numpy views, no copies)."""
    out, off = {}, 0
    for name, shape, dt in layout:
        n = math.prod(shape)
        x = flat[off:off + n].reshape(shape)
        off += n
        out[name] = (x != 0) if dt == "bool" else x.view(np.dtype(dt))
    return out
