"""The engine on the embedded default model (SmolLM2-135M-Instruct) against the unbatched reference."""
from __future__ import annotations

from jaxsgl.engine.engine import Engine
from jaxsgl.engine.reference_generate import generate_ids
from jaxsgl.tokenizer import chat_prompt_ids


def test_default_model_chat_answer_and_cache_reuse(default_model):
    cfg, weights, _ = default_model
    with Engine(dtype="float32", debug_check_integrity=True) as eng:
        questions = ["What is the capital of France?", "What is the capital of Italy?"]
        ids = [chat_prompt_ids(eng.tokenizer, [{"role": "user", "content": q}]) for q in questions]
        sp = {"max_new_tokens": 12, "temperature": 0}
        outs = eng.generate(input_ids=ids, sampling_params=sp)
        assert outs[0]["text"] == "The capital of France is Paris."
        for i, out in enumerate(outs):
            want = generate_ids(cfg, weights, ids[i], 12, eos_ids=eng.eos_ids)
            assert out["output_ids"] == want
        again = eng.generate(input_ids=ids[0], sampling_params=sp)
        assert again["output_ids"] == outs[0]["output_ids"]
        assert again["meta_info"]["cached_tokens"] == (len(ids[0]) - 1) // 16 * 16 > 0
