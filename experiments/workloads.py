"""Real workloads from the SGLang paper as token-id request lists (host only, no JAX).

Three builders read ``/work/shared/data`` (see its README.md for sources and licenses):

- ``mmlu_workload``: MMLU 5-shot. Each subject's 5 dev examples form a long prefix shared by
  every test question of that subject (Hendrycks' original prompt layout).
- ``react_workload``: ReAct agent traces on HotpotQA. A few held-out traces form a few-shot
  prefix shared by every call; call j of a question extends call j-1's prompt with its
  thought, action and observation, and arrives only when call j-1 has finished.
- ``agents_workload``: recorded Generative Agents (Smallville) calls. Five call types, each a
  fixed instruction template (written for this experiment, not SGLang's own) plus the call's fields.

Output lengths are drawn once per workload from a seeded log-normal, so every policy in a grid
sees the same requests.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
Tokenize = Callable[[str], list[int]]


@dataclass
class Request:
    """One LLM call. ``after``: the rid it waits for (arrives when that one finishes)."""
    rid: str
    prompt_ids: list[int]
    max_new_tokens: int
    after: str | None = None
    group: str = ""


@dataclass
class Workload:
    """Requests in arrival order. arrival_rate: new root requests per scheduler step (None = all at once)."""
    name: str
    requests: list[Request]
    arrival_rate: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt_ids) for r in self.requests)

    @property
    def max_request_tokens(self) -> int:
        return max(len(r.prompt_ids) + r.max_new_tokens for r in self.requests)

    def unique_tokens(self) -> int:
        """Tokens in the trie of all prompts: the least any schedule must prefill."""
        return unique_prompt_tokens([r.prompt_ids for r in self.requests])

    def optimal_hit_rate(self, page_size: int = 1) -> float:
        """Hit rate with an infinite cache, requests served in arrival order (see optimal_cached_tokens)."""
        return optimal_cached_tokens([r.prompt_ids for r in self.requests], page_size) / max(self.prompt_tokens, 1)

    def subset(self, n: int) -> Workload:
        """The first n requests (plus nothing they wait for that is left out: `after` is dropped then)."""
        keep = self.requests[:n]
        rids = {r.rid for r in keep}
        reqs = [Request(r.rid, r.prompt_ids, r.max_new_tokens, r.after if r.after in rids else None, r.group)
                for r in keep]
        return Workload(self.name, reqs, self.arrival_rate, dict(self.meta))

    def summary(self) -> dict:
        lens = [len(r.prompt_ids) for r in self.requests]
        return {"workload": self.name, "requests": len(self.requests), "prompt_tokens": self.prompt_tokens,
                "unique_tokens": self.unique_tokens(), "mean_prompt": float(np.mean(lens)), "max_prompt": max(lens),
                "mean_output": float(np.mean([r.max_new_tokens for r in self.requests])),
                "optimal_hit_rate": self.optimal_hit_rate(1), "chained": sum(r.after is not None for r in self.requests)}


def unique_prompt_tokens(prompts: Sequence[Sequence[int]]) -> int:
    """Number of nodes in the token trie of `prompts`."""
    root: dict = {}
    count = 0
    for p in prompts:
        node = root
        for t in p:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
                count += 1
            node = nxt
    return count


def optimal_cached_tokens(prompts: Sequence[Sequence[int]], page_size: int = 1) -> int:
    """Prompt tokens an infinite cache serves when requests run one at a time in order: each reuses
    its longest common prefix with any earlier prompt, in whole pages, and never its last token
    (whose logits are needed) -- the scheduler's own matching rule."""
    root: dict = {}
    total = 0
    for p in prompts:
        node, depth = root, 0
        for t in p:
            nxt = node.get(t)
            if nxt is None:
                break
            node, depth = nxt, depth + 1
        usable = min(depth, len(p) - 1)
        total += usable // page_size * page_size
        node = root
        for t in p:
            node = node.setdefault(t, {})
    return total


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The benchmark data folder: `path`, else $JAXSGL_DATA, else ../shared/data next to the repo."""
    d = Path(path or os.environ.get("JAXSGL_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not d.is_dir():
        raise FileNotFoundError(f"benchmark data not found at {d}: pass data=... or set JAXSGL_DATA")
    return d


def default_tokenize() -> Tokenize:
    """encode() of the embedded default model's tokenizer (SmolLM2-135M-Instruct)."""
    from jaxsgl.model.resolve import resolve_model_dir
    from jaxsgl.tokenizer import load_tokenizer
    tok = load_tokenizer(resolve_model_dir(None))
    return lambda text: list(tok.encode(text))


def output_lengths(n: int, mean: float, *, sigma: float = 0.6, max_len: int = 256, seed: int = 0) -> list[int]:
    """n output lengths from a seeded log-normal with the given mean, clipped to [1, max_len]."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, n)
    return np.clip(np.rint(x), 1, max_len).astype(int).tolist()


# ------------------------------------------------------------------ MMLU 5-shot
def _mmlu_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if len(row) == 6]


def _mmlu_example(row: Sequence[str], with_answer: bool) -> str:
    q, *choices, answer = row
    text = q + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", choices)) + "\nAnswer:"
    return text + (f" {answer}\n\n" if with_answer else "")


def mmlu_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_subjects: int = 10,
                  per_subject: int = 12, shots: int = 5, shuffle: bool = True, output_mean: float = 6.0,
                  seed: int = 0) -> Workload:
    """MMLU `shots`-shot: `per_subject` test questions from `num_subjects` seeded-random subjects.
    shuffle=True interleaves subjects in arrival order (what makes the schedule matter)."""
    root = data_dir(data) / "mmlu" / "data"
    rng = np.random.default_rng(seed)
    subjects = sorted(p.name[:-len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
    chosen = sorted(rng.choice(subjects, size=min(num_subjects, len(subjects)), replace=False).tolist())
    texts: list[tuple[str, str]] = []
    for subj in chosen:
        head = f"The following are multiple choice questions (with answers) about {subj.replace('_', ' ')}.\n\n"
        prefix = head + "".join(_mmlu_example(r, True) for r in _mmlu_rows(root / "dev" / f"{subj}_dev.csv")[:shots])
        tests = _mmlu_rows(root / "test" / f"{subj}_test.csv")
        for i in sorted(rng.choice(len(tests), size=min(per_subject, len(tests)), replace=False).tolist()):
            texts.append((subj, prefix + _mmlu_example(tests[i], False)))
    if shuffle:
        texts = [texts[i] for i in rng.permutation(len(texts))]
    outs = output_lengths(len(texts), output_mean, max_len=32, seed=seed)
    reqs = [Request(f"mmlu{i}", tokenize(t), n, group=s) for i, ((s, t), n) in enumerate(zip(texts, outs))]
    return Workload("mmlu", reqs, meta={"subjects": chosen, "shots": shots})


# ------------------------------------------------------------------ ReAct HotpotQA
REACT_HEAD = ("Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can "
              "reason about the current situation, and Action can be three types:\n"
              "(1) Search[entity], which searches the exact entity on Wikipedia and returns the first paragraph.\n"
              "(2) Lookup[keyword], which returns the next sentence containing keyword in the current passage.\n"
              "(3) Finish[answer], which returns the answer and finishes the task.\nHere are some examples.\n")


def _react_steps(steps: Sequence[dict], upto: int) -> str:
    return "".join(f"Thought {k}: {s['thought']}\nAction {k}: {s['action']}\nObservation {k}: {s['observation']}\n"
                    for k, s in enumerate(steps[:upto], 1))


def react_traces(data: str | os.PathLike | None = None, *, num_questions: int = 16, shots: int = 2,
                 seed: int = 0) -> tuple[str, list[tuple[int, str, list]]]:
    """(few-shot prefix, [(index, question, steps)] of `num_questions` seeded-random other traces) of the
    ReAct HotpotQA file: the first `shots` traces make the prefix."""
    path = data_dir(data) / "sglang_bench" / "react_hotpotqa_100.jsonl"
    traces = [next(iter(json.loads(line).items())) for line in open(path, encoding="utf-8") if line.strip()]
    prefix = REACT_HEAD + "".join(f"{q}\n{_react_steps(s, len(s))}\n" for q, s in traces[:shots])
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(np.arange(shots, len(traces)), size=min(num_questions, len(traces) - shots),
                              replace=False).tolist())
    return prefix, [(i, *traces[i]) for i in picks]


def react_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_questions: int = 16,
                   shots: int = 2, output_mean: float = 40.0, seed: int = 0) -> Workload:
    """ReAct traces: the first `shots` traces of the file are the few-shot prefix; `num_questions`
    seeded-random others are replayed, one call per step, each call chained after the previous."""
    prefix, picked = react_traces(data, num_questions=num_questions, shots=shots, seed=seed)
    texts: list[tuple[str, str, str | None]] = []
    for qi, question, steps in picked:
        for j in range(1, len(steps) + 1):
            prev = f"react{qi}.{j - 1}" if j > 1 else None
            texts.append((f"react{qi}.{j}", f"{prefix}{question}\n{_react_steps(steps, j - 1)}Thought {j}:", prev))
    outs = output_lengths(len(texts), output_mean, max_len=128, seed=seed)
    reqs = [Request(rid, tokenize(t), n, after=prev, group=rid.split(".")[0])
            for (rid, t, prev), n in zip(texts, outs)]
    return Workload("react", reqs, meta={"questions": len(picked), "shots": shots})


# ------------------------------------------------------------------ Generative Agents
AGENT_TEMPLATES: dict[str, str] = {
    "action_location_sector": (
        "You help characters in a small-town simulation decide where to go next.\nRules: stay in the current "
        "area if the action can be done there; prefer the character's own home for personal activities such as "
        "sleeping, eating at home or getting ready; answer with exactly one area from the options.\n\nExample:\n"
        "Sam Kim lives in Sam Kim's house, which has Sam Kim's room, bathroom, kitchen.\nSam Kim is currently in "
        "Sam Kim's house, which has Sam Kim's room, bathroom, kitchen.\nArea options: Sam Kim's house, Hobbs "
        "Cafe, Johnson Park, Oak Hill College.\nSam Kim is reading. For taking a walk, Sam Kim should go to: "
        "{{Johnson Park}}\n---\n{persona_name} lives in {living_sector}, which has {living_sector_areas}.\n"
        "{persona_name} is currently in {current_sector}, which has {current_sector_areas}.{daily_plan}\n"
        "Area options: {sector_options}.\n{persona_name} is {current_action}. For {next_action}, "
        "{persona_name} should go to: {{"),
    "action_location_object": (
        "You help characters in a small-town simulation pick the room for their next action.\nRules: pick a "
        "room inside the target area; answer with exactly one room from the list.\n\nExample:\nJane is in "
        "Jane's house, which has Jane's room, kitchen, bathroom.\nJane is eating breakfast. For cooking "
        "breakfast, Jane should go to: {{kitchen}}\n---\n{persona_name} is going to {target_sector}, which has "
        "{target_sector_areas}.\n{persona_name} is {current_action}. For {next_action}, {persona_name} should "
        "go to: {{"),
    "generate_pronunciatio": (
        "Convert an action description to one or two emoji.\nExamples:\nsleeping -> \U0001F634\n"
        "eating breakfast -> \U0001F373\U0001F35E\nwriting a paper -> \U0001F4DD\nAction: {action}\nEmoji:"),
    "generate_event_triple": (
        "Convert an action description to a (subject, predicate, object) triple.\nExamples:\nInput: Dolores "
        "Murphy is eating breakfast\nOutput: (Dolores Murphy, eat, breakfast)\nInput: Michael Bernstein is "
        "writing email on a computer\nOutput: (Michael Bernstein, write, email)\nInput: {persona_name} is "
        "{action}\nOutput: ({persona_name},"),
    "poignancy_event": (
        "Here is a brief description of a character.\n{persona_iss}\nOn a scale of 1 to 10, where 1 is purely "
        "mundane (e.g., brushing teeth, making bed) and 10 is extremely poignant (e.g., a break up, college "
        "acceptance), rate the likely poignancy of the following event for {persona_name}.\nEvent: {event}\n"
        "Rate (return a number between 1 and 10):"),
}


def agents_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_calls: int = 300,
                    start: int = 0, arrival_rate: float | None = 2.0, output_mean: float = 12.0,
                    seed: int = 0) -> Workload:
    """`num_calls` consecutive recorded Generative Agents calls from `start` (file order = simulation
    time), streamed in at `arrival_rate` calls per scheduler step."""
    path = data_dir(data) / "sglang_bench" / "generative_agents_agent_calls.jsonl"
    with open(path, encoding="utf-8") as f:
        calls = [next(iter(json.loads(line).items())) for line in f if line.strip()][start:start + num_calls]
    outs = output_lengths(len(calls), output_mean, max_len=64, seed=seed)
    reqs = [Request(f"agent{start + i}", tokenize(AGENT_TEMPLATES[kind].format(**fields)), n, group=kind)
            for i, ((kind, fields), n) in enumerate(zip(calls, outs))]
    return Workload("agents", reqs, arrival_rate=arrival_rate, meta={"start": start})


def synthetic_workload(*, num_groups: int = 8, per_group: int = 8, prefix_len: int = 256, question_len: int = 48,
                       output_len: int = 8, shuffle: bool = True, seed: int = 0, vocab: int = 50_000,
                       offset: int = 1000) -> Workload:
    """num_groups x per_group prompts = group prefix + own question, from token ids >= offset (so they
    never collide with MockModel outputs, which are < 1000). No prompt is a prefix of another."""
    rng = np.random.default_rng(seed)
    reqs = []
    for g in range(num_groups):
        prefix = (offset + g * 7919 % vocab,) + tuple(rng.integers(offset, offset + vocab, prefix_len - 1).tolist())
        for i in range(per_group):
            q = rng.integers(offset, offset + vocab, question_len).tolist()
            reqs.append(Request(f"s{g}.{i}", list(prefix) + q, output_len, group=f"g{g}"))
    if shuffle:
        reqs = [reqs[i] for i in rng.permutation(len(reqs))]
    return Workload("synthetic", reqs)


# ------------------------------------------------------------------ synthetic sweeps (simulator notebooks)
def zipf_prefix_workload(*, num_requests: int = 400, num_prefixes: int = 64, zipf_s: float = 1.1,
                         prefix_len: int = 512, question_len: int = 32, output_len: int = 16, seed: int = 0,
                         vocab: int = 40_000, offset: int = 1000) -> Workload:
    """num_requests prompts = one of num_prefixes shared prefixes + an own question. Prefix k (rank
    0 = most popular) is drawn with probability proportional to 1 / (k + 1) ** zipf_s: zipf_s ~ 1 is
    Zipfian (a few hot prefixes), zipf_s ~ 0 near-uniform (a long tail). `group` = "p<rank>"."""
    rng = np.random.default_rng(seed)
    prefixes = [[offset + k] + rng.integers(offset, offset + vocab, prefix_len - 1).tolist()
                for k in range(num_prefixes)]
    p = 1.0 / np.arange(1, num_prefixes + 1) ** zipf_s
    ranks = rng.choice(num_prefixes, size=num_requests, p=p / p.sum())
    reqs = [Request(f"z{i}", prefixes[k] + rng.integers(offset, offset + vocab, question_len).tolist(), output_len,
                    group=f"p{k}") for i, k in enumerate(ranks.tolist())]
    return Workload(f"zipf{zipf_s:g}", reqs, meta={"zipf_s": zipf_s, "num_prefixes": num_prefixes,
                                                  "popularity": (p / p.sum()).tolist()})


def overlap_workload(overlap: float, *, num_groups: int = 8, per_group: int = 16, prompt_len: int = 512,
                     output_len: int = 16, seed: int = 0, vocab: int = 40_000, offset: int = 1000) -> Workload:
    """num_groups x per_group prompts of prompt_len tokens whose first round(overlap x prompt_len)
    tokens are shared within the group (the mean prefix-overlap ratio), the rest unique; shuffled."""
    rng = np.random.default_rng(seed)
    shared = int(round(overlap * prompt_len))
    reqs = []
    for g in range(num_groups):
        prefix = rng.integers(offset, offset + vocab, shared).tolist()
        for i in range(per_group):
            own = rng.integers(offset, offset + vocab, prompt_len - shared).tolist()
            reqs.append(Request(f"o{g}.{i}", prefix + own, output_len, group=f"g{g}"))
    reqs = [reqs[i] for i in rng.permutation(len(reqs))]
    return Workload(f"overlap{overlap:g}", reqs, meta={"overlap": overlap, "shared_tokens": shared})


def _synthetic_ids(rng: np.random.Generator, n: int, vocab: int = 40_000, offset: int = 1000) -> list[int]:
    return rng.integers(offset, offset + vocab, n).tolist()


def tot_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_questions: int = 8,
                 branches: int = 2, levels: Sequence[str] = ("Plan", "Execution", "Reflection", "Answer"),
                 output_mean: float = 48.0, seed: int = 0) -> Workload:
    """Tree-of-thought on GSM8K (benchmarks/tree_of_thought.py's program as requests): per question a
    tree of `len(levels)` levels, each node forking `branches` ways; a child's prompt is its parent's
    prompt + the parent's output + "\\n<Level> i:", and it arrives when the parent finishes. Outputs are
    synthetic ids (log-normal lengths), listed in meta["outputs"] so a simulation caches exactly the
    tokens the children's prompts contain (pass them as Simulator.run(outputs=...))."""
    rows = [json.loads(line) for line in open(data_dir(data) / "gsm8k" / "test.jsonl", encoding="utf-8")]
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(rows), size=min(num_questions, len(rows)), replace=False).tolist())
    head = tokenize("You solve grade-school math problems. Propose plans, carry them out, check them, "
                    "then state the final number.\n\n")
    newline = tokenize("\n")
    reqs: list[Request] = []
    outputs: dict[str, list[int]] = {}
    n_nodes = sum(branches ** (d + 1) for d in range(len(levels)))
    lens = iter(output_lengths(len(picks) * n_nodes, output_mean, max_len=256, seed=seed))
    for qi in picks:
        frontier: list[tuple[str | None, list[int]]] = [(None, head + tokenize("Question: " + rows[qi]["question"] + "\n"))]
        for name in levels:
            nxt = []
            for parent, state in frontier:
                for i in range(branches):
                    rid = f"tot{qi}.{len(reqs)}"
                    prompt = state + tokenize(f"{name} {i + 1}:")
                    out = _synthetic_ids(rng, next(lens))
                    reqs.append(Request(rid, prompt, len(out), after=parent, group=f"q{qi}"))
                    outputs[rid] = out
                    nxt.append((rid, prompt + out + newline))
            frontier = nxt
    return Workload("tree-of-thought", reqs, meta={"outputs": outputs, "questions": len(picks)})


def chat_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_conversations: int = 24,
                  turns: int = 4, max_user_tokens: int = 256, output_mean: float = 96.0,
                  seed: int = 0) -> Workload:
    """Multi-turn chat: each conversation has `turns` user messages (real first turns of ShareGPT
    conversations, truncated to max_user_tokens) under one shared system prompt, in ChatML. Turn t's
    prompt is the whole history (every earlier user message and reply) + user message t; it arrives
    when turn t-1 finishes. Replies are synthetic ids (log-normal lengths) in meta["outputs"]."""
    convs = json.load(open(data_dir(data) / "sharegpt" / "ShareGPT_V3_filtered_1000.json", encoding="utf-8"))
    rng = np.random.default_rng(seed)
    msgs = [convs[i]["conversations"][0]["value"] for i in rng.permutation(len(convs))[:num_conversations * turns]]
    system = tokenize("<|im_start|>system\nYou are a helpful assistant. Answer clearly and concisely, and ask a "
                      "question back when the request is ambiguous.<|im_end|>\n")
    lens = iter(output_lengths(num_conversations * turns, output_mean, max_len=512, seed=seed))
    reqs: list[Request] = []
    outputs: dict[str, list[int]] = {}
    for c in range(num_conversations):
        history = list(system)
        for t in range(turns):
            user = tokenize("<|im_start|>user\n")
            user += tokenize(msgs[c * turns + t])[:max_user_tokens] + tokenize("<|im_end|>\n<|im_start|>assistant\n")
            rid = f"chat{c}.{t}"
            out = _synthetic_ids(rng, next(lens))
            reqs.append(Request(rid, history + user, len(out), after=f"chat{c}.{t - 1}" if t else None,
                                group=f"c{c}"))
            outputs[rid] = out
            history = history + user + out + tokenize("<|im_end|>\n")
    return Workload("multi-turn-chat", reqs, meta={"outputs": outputs, "conversations": num_conversations})
