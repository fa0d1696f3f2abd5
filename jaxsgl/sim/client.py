"""How a client's chained calls reach the engine: a call sent when the call it waits for returns.

Measured on the engine (benchmarks/client_profile.py, or experiments/fidelity.py's held-out traces),
stored in a step profile's "client" section or a fidelity run's, and replayed by the Simulator. A chained
call's predecessor finishes while the engine's loop processes a step; the client is woken then. Two things can happen (the GIL decides):

- inline: the client's thread takes the GIL at the step's end and queues its next call before the
  loop drains its inbox, and the loop waits for it: the call makes the next step scheduled, and its
  arrival is `inline_turnaround` after the finish (the client's own Python);
- not inline: the loop drains first and schedules the next step; the client runs later (typically
  while that step is dispatched) and its call arrives `turnaround` after the finish: the step after.

`inline_probability` is the measured share of inline calls (session 16: ~0.6 on a CPU, in-process and
with the engine in its own process). It depends on the workload as well as the client (session 17, H200:
0.96 on a synthetic chained workload, 0.60-0.84 in react, 0.38-0.52 in tree-of-thought), so the fidelity
harness measures it per workload on a held-out trace (experiments/fidelity.py --client-turnaround
calibrate). The Simulator draws it per call from (seed, rid), so a run is reproducible. `chained_lags` classifies a recorded run's chained calls. Host only.
"""
from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any


@dataclass(frozen=True)
class ChainedClient:
    """A client's chained-call behaviour (module docstring); times in seconds."""
    turnaround: float = 0.0
    inline_probability: float = 0.0
    inline_turnaround: float = 0.0

    def is_inline(self, rid: str, seed: int = 0) -> bool:
        """Whether rid's call is queued inline, drawn from (seed, rid): the same in every run."""
        return self.inline_probability > 0 and random.Random(f"{seed}/{rid}").random() < self.inline_probability

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChainedClient:
        return cls(float(d.get("turnaround", 0.0)), float(d.get("inline_probability", 0.0)),
                   float(d.get("inline_turnaround", 0.0)))

    @classmethod
    def measured(cls, turnarounds: Sequence[float], lags: Sequence[int]) -> ChainedClient:
        """From a run's chained calls: each one's turnaround (arrival - predecessor's finish) and its
        chained_lags value (0: it made the next step scheduled, inline)."""
        if len(turnarounds) != len(lags) or not lags:
            raise ValueError(f"need one lag per turnaround, got {len(turnarounds)} and {len(lags)}")
        inline = [t for t, lag in zip(turnarounds, lags) if lag == 0]
        later = [t for t, lag in zip(turnarounds, lags) if lag > 0]
        return cls(turnaround=median(later) if later else median(turnarounds),
                   inline_probability=len(inline) / len(lags),
                   inline_turnaround=median(inline) if inline else 0.0)


def load_client(profile: Mapping[str, Any]) -> ChainedClient | None:
    """The "client" section of a step profile (dict), or None where it has none."""
    d = profile.get("client")
    return None if not d else ChainedClient.from_dict(d)


def chained_lags(pairs: Sequence[tuple[str, str]], requests: Sequence[Mapping[str, Any]],
                 steps: Sequence[tuple[int, float, float]]) -> list[tuple[str, int]]:
    """For each chained call (rid, the rid it waits for) that ran: (rid, lag), where lag counts the steps
    between the first step dispatched after its predecessor's step ended and the step that admitted it:
    0 = it made that step. requests: dicts with rid, finish_time, admit_step; steps: (step, dispatch,
    end) in step order, on the requests' clock."""
    by_rid = {r["rid"]: r for r in requests}
    ends = [end for _, _, end in steps]
    index = {n: i for i, (n, _, _) in enumerate(steps)}
    out = []
    for rid, after in pairs:
        r, pred = by_rid.get(rid), by_rid.get(after)
        if r is None or pred is None or r.get("admit_step") not in index or pred.get("finish_time") is None:
            continue
        i = bisect.bisect_left(ends, pred["finish_time"] - 1e-5)  # the step its predecessor finished in
        first = next((k for k in range(i + 1, len(steps)) if steps[k][1] >= ends[i] - 1e-9), None) \
            if i < len(steps) else None
        if first is not None:
            out.append((rid, index[r["admit_step"]] - first))
    return out
