"""Req: the scheduler's state of one generation request (host only)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from jaxsgl.cache.tree_node import TreeNode

PLACEHOLDER = -1  # output id of a token sampled on the device but not read back yet (scheduler/advance.py)


class ReqStatus(enum.Enum):
    WAITING = "waiting"    # in the queue; owns no pages and no lock
    RUNNING = "running"    # admitted; owns pages (a locked cached prefix + private pages)
    FINISHED = "finished"  # done; its KV went to the radix cache (or was freed)
    ABORTED = "aborted"    # cancelled; same release as FINISHED


@dataclass(eq=False)
class Req:
    """One request. The scheduler mutates the KV fields; the engine reads outputs.

    Token model: `all_ids = prompt_ids + output_ids`. KV exists for all_ids[:kv_len];
    the next step feeds all_ids[kv_len:] (the whole uncached prompt in prefill, or
    chunks of it; one token in decode). The last output token has no KV until fed.
    The last num_placeholders output ids are PLACEHOLDER (scheduler/advance.py): sampled
    on the device, not read back yet.

    KV ownership while RUNNING: pages[i] holds tokens [i*ps, (i+1)*ps). The first
    num_tree_pages pages belong to the radix cache and are pinned by lock_node;
    the rest are private to this request (freed or inserted on release).
    """

    rid: str
    prompt_ids: list[int]
    max_new_tokens: int = 128
    sampling_params: dict[str, Any] = field(default_factory=dict)  # opaque to the scheduler
    priority: int = 0            # larger = more important (retracted last; kept longer by "priority" eviction)
    arrival_time: float | None = None  # set by Scheduler.add_request when None
    logprob_start_len: int | None = None  # input logprobs wanted from here: cache reuse stops here
    needs_known_tokens: bool = False  # never scheduled with a token still in flight (host-side grammar masks)

    output_ids: list[int] = field(default_factory=list)
    status: ReqStatus = ReqStatus.WAITING
    finish_reason: Any = None
    # KV state (scheduler-owned)
    pages: list[int] = field(default_factory=list)
    num_tree_pages: int = 0
    num_placeholders: int = 0    # trailing output_ids whose sampled id is still on the device (overlap)
    lock_node: TreeNode | None = None
    kv_len: int = 0
    cached_len: int = 0          # prompt tokens served by the cache at first admission
    # bookkeeping
    seq_no: int = 0              # arrival order (tie-breaker), set by add_request
    enqueue_step: int = 0        # scheduler step at which it (re)entered the queue
    first_admit_step: int | None = None
    num_admissions: int = 0
    num_retractions: int = 0

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """all_ids[start:end] without building all_ids (cheap for decode steps)."""
        n = len(self.prompt_ids)
        if start >= n:
            return self.output_ids[start - n:end - n]
        if end <= n:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[:end - n]

    @property
    def num_generated(self) -> int:
        """Output tokens whose ids are known (output_ids minus trailing placeholders)."""
        return len(self.output_ids) - self.num_placeholders

    def generated_ids(self) -> list[int]:
        """A copy of the known output ids (never a placeholder)."""
        return self.output_ids[:self.num_generated]

    @property
    def seq_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet fed through the model (their KV does not exist yet)."""
        return self.seq_len - self.kv_len

    @property
    def is_decoding(self) -> bool:
        """Prompt (and any re-prefilled outputs) has KV; exactly one sampled token is pending."""
        return self.num_pending == 1 and self.kv_len >= len(self.prompt_ids)

    def cacheable_prefix(self) -> list[int]:
        """Tokens whose cached KV this request may reuse: all but the last (its logits are
        needed), and none from logprob_start_len on (their logits are needed too)."""
        end = self.seq_len - 1
        if self.logprob_start_len is not None:
            end = min(end, self.logprob_start_len)
        return self.all_ids[:max(end, 0)]

    @property
    def remaining_new_tokens(self) -> int:
        """Tokens still to sample (in-flight placeholders count as sampled): 0 = schedule no more."""
        return max(self.max_new_tokens - len(self.output_ids), 0)

    @property
    def reached_max_new_tokens(self) -> bool:
        """The length stop, decided on known tokens only (the engine finishes it with "length")."""
        return self.num_generated >= self.max_new_tokens

    @property
    def is_done(self) -> bool:
        return self.status in (ReqStatus.FINISHED, ReqStatus.ABORTED)

    def private_pages(self) -> list[int]:
        return self.pages[self.num_tree_pages:]

    def __repr__(self) -> str:
        return (f"Req({self.rid!r}, {self.status.value}, prompt={len(self.prompt_ids)}, "
                f"out={len(self.output_ids)}, kv={self.kv_len}, pages={len(self.pages)})")
