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


def react_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_questions: int = 16,
                   shots: int = 2, output_mean: float = 40.0, seed: int = 0) -> Workload:
    """ReAct traces: the first `shots` traces of the file are the few-shot prefix; `num_questions`
    seeded-random others are replayed, one call per step, each call chained after the previous."""
    path = data_dir(data) / "sglang_bench" / "react_hotpotqa_100.jsonl"
    traces = [next(iter(json.loads(line).items())) for line in open(path, encoding="utf-8") if line.strip()]
    prefix = REACT_HEAD + "".join(f"{q}\n{_react_steps(s, len(s))}\n" for q, s in traces[:shots])
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(np.arange(shots, len(traces)), size=min(num_questions, len(traces) - shots),
                              replace=False).tolist())
    texts: list[tuple[str, str, str | None]] = []
    for qi in picks:
        question, steps = traces[qi]
        for j in range(1, len(steps) + 1):
            prev = f"react{qi}.{j - 1}" if j > 1 else None
            texts.append((f"react{qi}.{j}", f"{prefix}{question}\n{_react_steps(steps, j - 1)}Thought {j}:", prev))
    outs = output_lengths(len(texts), output_mean, max_len=128, seed=seed)
    reqs = [Request(rid, tokenize(t), n, after=prev, group=rid.split(".")[0])
            for (rid, t, prev), n in zip(texts, outs)]
    return Workload("react", reqs, meta={"questions": len(picks), "shots": shots})


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
