"""lpm-aging: longest prefix match whose score grows while a request waits (no starvation)."""
from __future__ import annotations

from jaxsgl.cache.radix_cache import RadixCache
from jaxsgl.scheduler.policy import SchedulePolicy, arrival_order, register_schedule_policy
from jaxsgl.scheduler.request import Req


@register_schedule_policy
class LPMAging(SchedulePolicy):
    """score = cached prefix tokens + alpha * seconds waited; highest first. `now` is the same for
    every request of one call, so ranking by matched - alpha * arrival_time needs no clock (the
    Engine stamps arrivals with time.monotonic, the simulator with its clock). alpha (tokens per
    second of waiting) trades hit rate for tail latency; alpha = 0 is plain lpm."""
    name = "lpm-aging"
    alpha = 1000.0
    max_queue = 2048  # like lpm: FCFS beyond this many waiting requests

    def __init__(self, seed: int = 0, alpha: float | None = None) -> None:
        super().__init__(seed)
        self.alpha = self.alpha if alpha is None else alpha

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        if len(waiting) > self.max_queue:
            return sorted(waiting, key=arrival_order)
        score = {id(r): cache.prefix_len(r.cacheable_prefix()) - self.alpha * (r.arrival_time or 0.0)
                 for r in waiting}
        return sorted(waiting, key=lambda r: (-score[id(r)], arrival_order(r)))
