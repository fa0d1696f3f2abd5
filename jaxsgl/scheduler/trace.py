"""Per-step trace records: flat dataclasses, one per scheduled step (pandas-friendly).

    import pandas as pd
    df = pd.DataFrame(scheduler.trace_records())
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class StepTrace:
    """What one Scheduler.schedule() call decided. The engine fills step_time (seconds)."""

    step: int
    num_seqs: int = 0
    num_prefill_seqs: int = 0
    num_decode_seqs: int = 0
    new_tokens: int = 0          # tokens fed through the model this step
    prefill_tokens: int = 0
    cached_tokens: int = 0       # tokens reused from the cache by requests admitted this step
    num_admitted: int = 0
    num_held_dedup: int = 0      # waiting requests held back by in-batch prefix de-duplication
    num_forced_fair: int = 0     # admitted ahead of the policy by the starvation bound
    num_retracted: int = 0
    evicted_pages: int = 0
    queue_len: int = 0           # waiting requests after this step's admissions
    num_running: int = 0
    free_pages: int = 0
    evictable_pages: int = 0
    locked_pages: int = 0
    new_token_ratio: float = 0.0
    sync_fallback: bool = False  # overlap on, but this step waited for the previous one's results
    step_time: float | None = None   # seconds in ModelRunner.run (transfer + device + transfer back);
    #                                  overlap: from dispatch until the results are on the host
    end_time: float | None = None    # time.perf_counter() when the engine finished the step (host work included)
    # Host seconds of the engine's loop spent on this step, by phase (where a step's wall goes):
    prepare_time: float | None = None   # schedule + build the step's inputs
    dispatch_time: float | None = None  # ModelRunner.run_async (transfer + launch; returns before the device ends)
    wait_time: float | None = None      # blocked reading its results back (the device still running)
    process_time: float | None = None   # RequestTracker.on_step_output (stop checks, detokenizing, outputs)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
