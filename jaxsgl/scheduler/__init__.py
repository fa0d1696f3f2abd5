"""Host-side scheduling (plain Python + numpy, never JAX): requests, policies,
continuous batching, chunked prefill, retraction, StepInput packing.
See docs/cache_and_scheduler.md.
"""
from jaxsgl.scheduler.batch import ScheduledBatch, SeqWork, StepInputBuilder, pow2_buckets
from jaxsgl.scheduler.config import SchedulerConfig
from jaxsgl.scheduler.kv import ReqKV
from jaxsgl.scheduler.policy import (SchedulePolicy, make_schedule_policy, register_schedule_policy,
                                     schedule_policy_names)
from jaxsgl.scheduler.request import Req, ReqStatus
from jaxsgl.scheduler.scheduler import Scheduler, SchedulerStats
from jaxsgl.scheduler.trace import StepTrace

__all__ = ["Req", "ReqStatus", "Scheduler", "SchedulerConfig", "SchedulerStats", "ScheduledBatch", "SeqWork",
           "StepInputBuilder", "pow2_buckets", "StepTrace", "ReqKV", "SchedulePolicy", "register_schedule_policy",
           "make_schedule_policy", "schedule_policy_names"]

from jaxsgl.scheduler.policies import aging as _aging  # noqa: E402,F401  (plug-in policies register by name)
