"""Engine test fixtures: a tiny random Llama with the default model's tokenizer and peaky logits."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """2-layer Llama, vocab 49152 + SmolLM2's tokenizer. initializer_range 0.2 gives logit gaps far above
    float noise, so greedy outputs do not depend on batch composition."""
    import torch
    import transformers

    out = tmp_path_factory.mktemp("tiny_llama")
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.2,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (Path(default_model_dir) / f).exists():
            shutil.copy(Path(default_model_dir) / f, out / f)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from jaxsgl.engine.engine import Engine

    """The synchronous engine (no overlap): the reference the overlapped default is compared with."""
    eng = Engine(str(tiny_model_dir), dtype="float32", debug_check_integrity=True, chunked_prefill_size=64,
                 disable_overlap_schedule=True)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def workload():
    from tests.engine.workload import mixed_workload

    return mixed_workload()


@pytest.fixture(scope="session")
def baseline(tiny_model_dir, workload):
    """Greedy outputs (and cache stats) of the workload with the cache on, page 16, chunking: the reference."""
    from tests.engine.workload import CONFIGS, run

    return run(tiny_model_dir, workload, disable_overlap_schedule=True, **CONFIGS["cache-on-page16-chunked"])
