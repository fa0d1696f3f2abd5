"""gguf_convert.open_gguf (the faster metadata read) gives what the stock gguf.GGUFReader gives."""
from __future__ import annotations

import gguf
import numpy as np

from jaxsgl.model.gguf_convert import open_gguf
from jaxsgl.model.resolve import default_model_path


def test_fast_reader_matches_stock_reader():
    path = default_model_path()
    fast, stock = open_gguf(path), gguf.GGUFReader(str(path))
    assert list(fast.fields) == list(stock.fields)
    for name, f in stock.fields.items():
        g = fast.fields[name]
        assert (g.types, g.data, g.offset) == (f.types, f.data, f.offset), name
        assert len(g.parts) == len(f.parts) and all(
            a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(g.parts, f.parts)), name
    assert fast.fields["tokenizer.ggml.tokens"].contents() == stock.fields["tokenizer.ggml.tokens"].contents()
    assert [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in fast.tensors] == \
        [(t.name, t.tensor_type, list(t.shape), t.data_offset) for t in stock.tensors]
    for a, b in zip(fast.tensors, stock.tensors):
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data), a.name
