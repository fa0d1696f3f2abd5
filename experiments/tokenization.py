"""How often does tokenization break the cache on the same logical prefix? (tokenization.ipynb)

A radix cache matches token ids, but clients send text. When a request's text extends an earlier one
(a few-shot prefix and its question, an agent call and the next call, a chat turn and the next turn),
the cache holds the earlier request's tokens: tokenize(prefix) for a prompt, plus the ids it generated.
The new request is tokenized whole, and at the boundary BPE may split differently: "\\n\\n" at the end of
a text is one token but two before a word; "Answer: " ends in a lone space token that " B" would absorb.

    check(b, encode)            one Boundary: is the cached prefix a token prefix of the whole? by how much not?
    mmlu_boundaries / react_boundaries / chat_boundaries   real boundaries from ../shared/data, by kind
    cache_hits(calls, encode)   per request: tokens an infinite radix cache serves (token-level) vs the
                                ideal: this request's tokens that lie wholly inside text an earlier request
                                already cached (a text-level cache), in whole pages, never the last token

`encode(text) -> (ids, ends)`: token ids and each token's end offset in characters (hf_encoder wraps the
default model's tokenizer; tests pass a toy one). Host only (no JAX).
"""
from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.workloads import _mmlu_example, _mmlu_rows, _react_steps, data_dir, react_traces

Encode = Callable[[str], tuple[list[int], list[int]]]


def hf_encoder(tokenizer: Any) -> Encode:
    """encode() of an HF fast tokenizer with end offsets (no special tokens added, as default_tokenize)."""
    def encode(text: str) -> tuple[list[int], list[int]]:
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(out["input_ids"]), [e for _, e in out["offset_mapping"]]
    return encode


def default_tokenizer() -> Any:
    """The embedded default model's tokenizer (SmolLM2-135M-Instruct), as experiments.workloads.default_tokenize."""
    from jaxsgl.model.resolve import resolve_model_dir
    from jaxsgl.tokenizer import load_tokenizer
    return load_tokenizer(resolve_model_dir(None))


def common_prefix_len(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# ------------------------------------------------------------------ one boundary
@dataclass
class Boundary:
    """`prefix` is a text prefix of `full`; `gen` (optional) follows it inside `full` and is cached as its
    own tokenization (the ids a model generated), so the cache holds encode(prefix) + encode(gen)."""
    workload: str
    kind: str
    prefix: str
    full: str
    gen: str = ""

    def __post_init__(self) -> None:
        if not self.full.startswith(self.prefix + self.gen):
            raise ValueError("prefix + gen must be a text prefix of full")


def check(b: Boundary, encode: Encode, page_size: int = 16) -> dict[str, Any]:
    """broken: the cached ids are not a prefix of encode(full); shortfall: cached ids the new request
    cannot reuse (len(cached) - common prefix); lost_tokens: the cost in whole pages (of page_size)."""
    cached = encode(b.prefix)[0] + (encode(b.gen)[0] if b.gen else [])
    full = encode(b.full)[0]
    lcp = common_prefix_len(cached, full)
    cap = len(full) - 1  # the last prompt token is always computed (its logits are needed)
    ideal, got = min(len(cached), cap), min(lcp, cap)
    return {"workload": b.workload, "kind": b.kind, "cached_tokens": len(cached), "broken": lcp < len(cached),
            "shortfall": len(cached) - lcp, "lost_tokens": ideal // page_size * page_size - got // page_size * page_size,
            "prefix_end": repr(b.prefix[-2:]), "next": repr(b.full[len(b.prefix):len(b.prefix) + 2])}


# ------------------------------------------------------------------ real boundaries
def _subjects(data: str | os.PathLike | None, num_subjects: int | None, seed: int) -> list[str]:
    root = data_dir(data) / "mmlu" / "data"
    subjects = sorted(p.name[:-len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
    if num_subjects is not None and num_subjects < len(subjects):
        rng = np.random.default_rng(seed)
        subjects = sorted(rng.choice(subjects, size=num_subjects, replace=False).tolist())
    return subjects


def mmlu_prompts(data: str | os.PathLike | None = None, *, num_subjects: int | None = None, per_subject: int = 8,
                 shots: int = 5, seed: int = 0) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(subject, 5-shot prefix, [(question prompt ending "Answer:", answer letter)]) per subject (workloads.py's layout)."""
    root = data_dir(data) / "mmlu" / "data"
    out = []
    rng = np.random.default_rng(seed)
    for subj in _subjects(data, num_subjects, seed):
        head = f"The following are multiple choice questions (with answers) about {subj.replace('_', ' ')}.\n\n"
        prefix = head + "".join(_mmlu_example(r, True) for r in _mmlu_rows(root / "dev" / f"{subj}_dev.csv")[:shots])
        tests = _mmlu_rows(root / "test" / f"{subj}_test.csv")
        picks = sorted(rng.choice(len(tests), size=min(per_subject, len(tests)), replace=False).tolist())
        out.append((subj, prefix, [(_mmlu_example(tests[i], False), tests[i][5]) for i in picks]))
    return out


def mmlu_boundaries(data: str | os.PathLike | None = None, **kw: Any) -> list[Boundary]:
    """few-shot prefix | question; prompt | generated " B" | next question; and the same with a
    trailing-space template ("Answer: " then "B")."""
    out = []
    for _, prefix, qs in mmlu_prompts(data, **kw):
        for k, (q, ans) in enumerate(qs):
            nxt = qs[(k + 1) % len(qs)][0]
            out.append(Boundary("mmlu", "few-shot prefix | question", prefix, prefix + q))
            p = prefix + q
            out.append(Boundary("mmlu", "prompt | generation (' B')", p, f"{p} {ans}\n\n{nxt}", gen=f" {ans}"))
            out.append(Boundary("mmlu", "trailing space | generation ('B')", p + " ", f"{p} {ans}\n\n{nxt}", gen=ans))
    return out


def react_calls(data: str | os.PathLike | None = None, *, num_questions: int = 20, shots: int = 2,
                seed: int = 0, trailing_space: bool = False) -> list[tuple[str, str, str]]:
    """(group, prompt, generated text) of every call of `num_questions` ReAct traces (workloads.py's layout):
    call j ends "Thought j:" and generates " <thought>\\nAction j: <action>\\n"; the tool appends the
    observation. trailing_space: the prompt ends "Thought j: " and the generation has no leading space."""
    prefix, picked = react_traces(data, num_questions=num_questions, shots=shots, seed=seed)
    sp = " " if trailing_space else ""
    calls = []
    for qi, question, steps in picked:
        for j in range(1, len(steps) + 1):
            s = steps[j - 1]
            prompt = f"{prefix}{question}\n{_react_steps(steps, j - 1)}Thought {j}:{sp}"
            calls.append((f"react{qi}", prompt, f"{'' if sp else ' '}{s['thought']}\nAction {j}: {s['action']}\n"))
    return calls


def react_boundaries(data: str | os.PathLike | None = None, **kw: Any) -> list[Boundary]:
    """prompt | next call (the cache holds call j's prompt); generation | observation (it also holds
    call j's generated ids); trailing space | generation."""
    out = []
    for space in (False, True):
        calls = react_calls(data, trailing_space=space, **kw)
        for (g, p, gen), (g2, p2, _) in zip(calls, calls[1:]):
            if g != g2:
                continue
            nxt = p2[:-1] if space else p2  # p2's own trailing space is not part of this boundary
            if space:
                out.append(Boundary("react", "trailing space | generation", p, nxt, gen=gen))
            else:
                out.append(Boundary("react", "prompt | next call", p, nxt))
                out.append(Boundary("react", "generation | observation", p, nxt, gen=gen))
    return out


def chat_conversations(data: str | os.PathLike | None = None) -> list[tuple[str, str, str, str]]:
    """(source, user turn 1, assistant reply, user turn 2): ShareGPT's 50 real 2-turn pairs (turn 2:
    an MT-Bench second turn, cycled) and MT-Bench's 80 two-turn questions (reply: the reference answer
    where there is one, else a ShareGPT reply as a stand-in)."""
    d = data_dir(data)
    share = json.load(open(d / "sharegpt" / "sharegpt_sample_50_2turn.json", encoding="utf-8"))
    mt = [json.loads(line) for line in open(d / "mtbench" / "question.jsonl", encoding="utf-8") if line.strip()]
    replies = [c["conversations"][1]["value"] for c in share]
    out = [("sharegpt", c["conversations"][0]["value"], c["conversations"][1]["value"], mt[i % len(mt)]["turns"][1])
           for i, c in enumerate(share)]
    out += [("mtbench", q["turns"][0], (q.get("reference") or [replies[i % len(replies)]])[0], q["turns"][1])
            for i, q in enumerate(mt)]
    return out


def chat_texts(tokenizer: Any, conv: tuple[str, str, str, str]) -> tuple[str, str]:
    """(turn-1 prompt, turn-2 prompt) rendered by the model's chat template with the generation prompt."""
    _, u1, a1, u2 = conv
    render = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return (render([{"role": "user", "content": u1}]),
            render([{"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                    {"role": "user", "content": u2}]))


def chat_boundaries(tokenizer: Any, data: str | os.PathLike | None = None, limit: int | None = None) -> list[Boundary]:
    """prompt | reply (the cache holds turn 1's templated prompt) and reply | next turn (it also
    holds the reply's ids; the end-of-turn token that stops generation is not cached)."""
    out = []
    for conv in chat_conversations(data)[:limit]:
        t1, t2 = chat_texts(tokenizer, conv)
        if not t2.startswith(t1 + conv[2]):
            raise ValueError("the chat template does not extend turn 1's prompt with the reply")
        out.append(Boundary(f"chat ({conv[0]})", "templated prompt | reply", t1, t2))
        out.append(Boundary(f"chat ({conv[0]})", "reply | next turn (template join)", t1, t2, gen=conv[2]))
    return out


def rates(rows: Sequence[dict]) -> Any:
    """Per (workload, kind): boundaries, share broken, mean / max shortfall when broken, tokens lost in pages."""
    import pandas as pd
    df = pd.DataFrame(rows)
    g = df.groupby(["workload", "kind"], sort=False)
    out = g.agg(n=("broken", "size"), broken_rate=("broken", "mean"), mean_cached=("cached_tokens", "mean"),
                lost_tokens_per_boundary=("lost_tokens", "mean"))
    br = df[df.broken].groupby(["workload", "kind"], sort=False).shortfall
    out["shortfall_mean_if_broken"] = br.mean()
    out["shortfall_max"] = br.max()
    return out


# ------------------------------------------------------------------ cost in cache hits
@dataclass
class Call:
    """One request: its prompt text and the text it generates (cached after it as its own ids)."""
    group: str
    prompt: str
    gen: str = ""


def _best_lcp(sorted_items: list, item: Any) -> int:
    """Longest common prefix of `item` with any element of the sorted list: one of its neighbours."""
    i = bisect.bisect_left(sorted_items, item)
    return max((common_prefix_len(item, sorted_items[j]) for j in (i - 1, i) if 0 <= j < len(sorted_items)),
               default=0)


def cache_hits(calls: Sequence[Call], encode: Encode, page_size: int = 16) -> list[dict[str, Any]]:
    """Serve `calls` in order through an infinite radix cache (each caches prompt ids + generated ids).
    Per call: prompt tokens, token-level hit (longest cached token prefix) and the ideal (this call's
    tokens that end inside the longest text prefix any earlier call cached), both in whole pages, capped
    at prompt - 1."""
    texts: list[str] = []
    seqs: list[tuple[int, ...]] = []
    out = []
    for c in calls:
        ids, ends = encode(c.prompt)
        cap = len(ids) - 1
        text_lcp = _best_lcp(texts, c.prompt)
        ideal = min(bisect.bisect_right(ends, text_lcp), cap)
        got = min(_best_lcp(seqs, tuple(ids)), cap)
        out.append({"group": c.group, "prompt_tokens": len(ids), "hit": got // page_size * page_size,
                    "ideal": ideal // page_size * page_size})
        gen = encode(c.gen)[0] if c.gen else []
        bisect.insort(texts, c.prompt + c.gen)
        bisect.insort(seqs, tuple(ids + gen))
    return out


def hit_summary(rows: Sequence[dict]) -> dict[str, float]:
    """Token-level and ideal hit rates (over prompt tokens) of cache_hits() rows, and the share of ideal hits lost."""
    prompt = sum(r["prompt_tokens"] for r in rows)
    hit, ideal = sum(r["hit"] for r in rows), sum(r["ideal"] for r in rows)
    return {"requests": len(rows), "prompt_tokens": prompt, "hit_rate": hit / prompt, "ideal_hit_rate": ideal / prompt,
            "lost_tokens": ideal - hit, "lost_share_of_ideal": (ideal - hit) / ideal if ideal else 0.0,
            "requests_losing": sum(r["ideal"] > r["hit"] for r in rows)}


def mmlu_calls(data: str | os.PathLike | None = None, **kw: Any) -> list[Call]:
    """Per subject the 5-shot prefix alone first (a frontend caching a shared prefix before its forks),
    then each question (prefix + question, generating " <letter>")."""
    out = []
    for subj, prefix, qs in mmlu_prompts(data, **kw):
        out.append(Call(subj, prefix))
        out += [Call(subj, prefix + q, f" {ans}") for q, ans in qs]
    return out


def chat_calls(tokenizer: Any, data: str | os.PathLike | None = None, limit: int | None = None) -> list[Call]:
    """Turn 1 (generating the reply), then turn 2, of every conversation of chat_conversations()."""
    out = []
    for k, conv in enumerate(chat_conversations(data)[:limit]):
        t1, t2 = chat_texts(tokenizer, conv)
        out += [Call(f"{conv[0]}{k}", t1, conv[2]), Call(f"{conv[0]}{k}", t2)]
    return out
