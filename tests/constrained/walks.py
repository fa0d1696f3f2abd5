"""Random walks through a TokenAutomaton that always end in EOS (test helper)."""
from __future__ import annotations

import random
from collections import deque

import numpy as np

from jaxsgl.constrained import TokenAutomaton


def distance_to_accept(fsm: TokenAutomaton) -> np.ndarray:
    """int[S]: fewest tokens from each state to an accepting state (reverse BFS)."""
    rows = np.repeat(np.arange(fsm.num_states), np.diff(fsm.trans_start))
    predecessors: dict[int, set[int]] = {}
    for src, dst in set(zip(rows.tolist(), fsm.trans_next.tolist())):
        predecessors.setdefault(dst, set()).add(src)
    dist = np.full(fsm.num_states, -1, np.int64)
    queue = deque(np.flatnonzero(fsm.accepting).tolist())
    dist[list(queue)] = 0
    while queue:
        s = queue.popleft()
        for p in predecessors.get(s, ()):
            if dist[p] < 0:
                dist[p] = dist[s] + 1
                queue.append(p)
    return dist


def random_walk(
    fsm: TokenAutomaton,
    rng: random.Random,
    *,
    dist: np.ndarray | None = None,
    budget: int = 40,
    p_stop: float = 0.3,
) -> tuple[list[int], list[int]]:
    """(tokens, states visited) of a walk from state 0 to EOS.

    Random allowed tokens for `budget` steps (stopping at an accepting state with p_stop), then
    tokens that shorten the distance to acceptance, so every walk ends.
    """
    dist = distance_to_accept(fsm) if dist is None else dist
    state, tokens, states = 0, [], [0]
    while True:
        assert dist[state] >= 0, f"walk reached dead state {state}"
        if fsm.accepting[state] and (fsm.num_allowed(state) == 0 or rng.random() < p_stop
                                     or len(tokens) >= budget):
            tokens.append(fsm.eos_ids[0])
            return tokens, states
        lo, hi = int(fsm.trans_start[state]), int(fsm.trans_start[state + 1])
        if len(tokens) < budget:
            i = rng.randrange(lo, hi)
        else:
            closer = lo + np.flatnonzero(dist[fsm.trans_next[lo:hi]] < dist[state])
            i = int(rng.choice(closer.tolist()))
        tokens.append(int(fsm.trans_token[i]))
        state = int(fsm.trans_next[i])
        states.append(state)
