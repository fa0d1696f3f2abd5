"""The one-buffer step packing: round trips and the 256-byte alignment of every input array."""
from __future__ import annotations

import jax
import numpy as np

from jaxsgl.engine.packing import ALIGN, pack, pack_device, unpack, unpack_host


def test_pack_unpack_round_trip_with_aligned_offsets():
    arrays = {"a": np.arange(5, dtype=np.int32), "b": np.array([0.5, -2.0, 3.25], np.float32),
              "c": np.array([True, False]), "d": np.arange(6, dtype=np.uint32).reshape(2, 3) + 2**31}
    flat, layout = pack(arrays)
    assert flat.dtype == np.int32 and flat.size == 4 * ALIGN
    # each array starts at a multiple of ALIGN int32s (256 bytes), zero padding between them
    np.testing.assert_array_equal(flat[:5], arrays["a"])
    np.testing.assert_array_equal(flat[ALIGN:ALIGN + 3].view(np.float32), arrays["b"])
    np.testing.assert_array_equal(flat[2 * ALIGN:2 * ALIGN + 2], [1, 0])
    np.testing.assert_array_equal(flat[3 * ALIGN:3 * ALIGN + 6].view(np.uint32), arrays["d"].ravel())
    assert not flat[5:ALIGN].any()
    got = jax.jit(lambda f: unpack(f, layout))(flat)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
        np.testing.assert_array_equal(np.asarray(got[name]), a, err_msg=name)


def test_outputs_round_trip():
    layouts = []

    def f(x):
        out, layout = pack_device({"ids": x.astype(np.int32), "lp": x * 0.5, "ok": x > 1, "none": None})
        layouts.append(layout)  # static: recorded at trace time
        return out
    out = jax.jit(f)(np.arange(4, dtype=np.float32))
    got = unpack_host(np.asarray(out), layouts[0])
    assert set(got) == {"ids", "lp", "ok"}
    np.testing.assert_array_equal(got["ids"], [0, 1, 2, 3])
    np.testing.assert_array_equal(got["lp"], [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(got["ok"], [False, False, True, True])
