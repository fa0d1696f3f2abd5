"""API speculative execution on the paper's kind of program: one `gen` per field of a document.

    python -m jaxsgl.lang.demo_spec                 # the embedded SmolLM2-135M-Instruct
    python -m jaxsgl.lang.demo_spec --num-api-spec-tokens 48 --model /path/to/hf_checkpoint

Serves the model with jaxsgl's HTTP server on 127.0.0.1, then runs `extract_fields` on a few short
biographies through `sgl.OpenAI` (completion model: /v1/completions; chat model:
/v1/chat/completions) with speculation off and on, and through `sgl.RuntimeEndpoint` (SGLang's
native API, which continues partial turns, the reference), and prints API calls, prompt and
completion tokens, and whether every field equals the reference.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

import jaxsgl as sgl

FORM = "\n\nFill in this form about the person:\nName:\nBorn:\nCity:\nField:"
EXAMPLE_DOC = ("Ada Lovelace was an English mathematician and writer, chiefly known for her work on Charles "
               "Babbage's Analytical Engine. She was born in London in 1815.")
EXAMPLE_ANSWER = "Ada Lovelace\nBorn: 1815\nCity: London\nField: Mathematics"
DOCS = [
    "Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. She was born "
    "Maria Sklodowska in Warsaw in 1867, studied in Paris, and was the first woman to win a Nobel Prize.",
    "Alan Turing was an English mathematician and computer scientist. Born in London in 1912, he formalised the "
    "concepts of algorithm and computation with the Turing machine and helped break the Enigma cipher.",
    "Charles Darwin was an English naturalist, geologist and biologist, best known for his contributions to "
    "evolutionary biology. He was born in Shrewsbury in 1809 and sailed on HMS Beagle.",
]
FIELDS = ("name", "born", "city", "field")


def extract_fields(s: Any, doc: str) -> None:
    """A few-shot chat, then one gen per field inside the assistant turn."""
    s += sgl.system("You fill in forms.")
    s += sgl.user(EXAMPLE_DOC + FORM)
    s += sgl.assistant(EXAMPLE_ANSWER)
    s += sgl.user(doc + FORM)
    with s.assistant():
        s += sgl.gen("name", max_tokens=16, stop="\n")
        s += "\nBorn:" + sgl.gen("born", max_tokens=16, stop="\n")
        s += "\nCity:" + sgl.gen("city", max_tokens=16, stop="\n")
        s += "\nField:" + sgl.gen("field", max_tokens=16, stop="\n")


def measure(backend: Any, spec_tokens: Optional[int], docs: list[str]) -> tuple[dict[str, int], list[list[str]]]:
    """(token_usage over docs, the fields of each doc) of extract_fields run greedily one doc at a time."""
    program = sgl.function(num_api_spec_tokens=spec_tokens)(extract_fields)
    backend.token_usage.reset()
    fields = []
    for doc in docs:
        state = program.run(doc=doc, temperature=0, backend=backend)
        if state.error() is not None:
            raise state.error()
        fields.append([state[k] for k in FIELDS])
    return backend.token_usage.snapshot(), fields


def run(url: str, model_name: str, tokenizer: Any, spec_tokens: int, docs: list[str]) -> list[dict[str, Any]]:
    """One row per (backend, speculation) setting: calls, tokens, fields, equal to the reference."""
    endpoint = sgl.RuntimeEndpoint(url)
    completion = sgl.OpenAI(model_name, base_url=url + "/v1", is_chat_model=False, chat_template=tokenizer)
    chat = sgl.OpenAI(model_name, base_url=url + "/v1", chat_template=tokenizer)
    ref_usage, ref = measure(endpoint, None, docs)
    rows = [{"backend": "RuntimeEndpoint (native)", "spec": "off", **ref_usage, "fields": ref, "equal": True}]
    settings = (("OpenAI completion", completion, None), ("OpenAI completion", completion, spec_tokens),
                ("OpenAI chat", chat, spec_tokens))
    for label, backend, spec in settings:
        usage, fields = measure(backend, spec, docs)
        rows.append({"backend": label, "spec": "off" if spec is None else str(spec), **usage, "fields": fields,
                     "equal": fields == ref})
    endpoint.shutdown()
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF checkpoint directory (default: the embedded model)")
    ap.add_argument("--num-api-spec-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)
    runtime = sgl.Runtime(args.model, dtype=args.dtype)
    try:
        url = runtime.serve()
        rows = run(url, runtime.get_model_name(), runtime.get_tokenizer(), args.num_api_spec_tokens, DOCS)
    finally:
        runtime.shutdown()
    print("| backend | speculation | API calls | prompt tokens | completion tokens | fields = reference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['spec']} | {r['num_api_calls']} | {r['prompt_tokens']} | "
              f"{r['completion_tokens']} | {'yes' if r['equal'] else 'no'} |")
    for doc_fields in rows[0]["fields"]:
        print(dict(zip(FIELDS, doc_fields)))


if __name__ == "__main__":
    main()
