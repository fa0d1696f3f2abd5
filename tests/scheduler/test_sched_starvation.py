"""Starvation: LPM keeps admitting requests with a popular cached prefix; an
unpopular-prefix request waits forever unless the fairness bound admits it."""
import numpy as np
import pytest

from jaxsgl.scheduler import Req, Scheduler
from jaxsgl.scheduler.mock_model import MockModel
from sched_harness import make_builder

POPULAR = list(range(1, 65))


def wait_of_unpopular(policy="lpm", steps=150, **fairness):
    clock = iter(range(10**6))  # one "second" per clock reading
    sched = Scheduler.create(1024, 1, schedule_policy=policy, max_running_requests=2,
                             clock=lambda: float(next(clock)), **fairness)
    model = MockModel(1024, 1)
    builder = make_builder(sched, 1024)
    rng = np.random.default_rng(0)

    def step():
        batch = sched.schedule()
        if batch:
            ids = model.step(builder.build(batch), batch)
            for req in sched.process_results(batch, ids):
                if len(req.output_ids) >= req.max_new_tokens:
                    sched.finish(req)
        sched.check_integrity()

    sched.add_request(Req("warm", POPULAR + [0], max_new_tokens=1))
    step()
    unpopular = sched.add_request(Req("unpopular", [999] * 64, max_new_tokens=4))
    for i in range(steps):
        for j in range(2):  # more popular arrivals than the batch can drain
            sched.add_request(Req(f"p{i}-{j}", POPULAR + rng.integers(100, 200, 8).tolist(), max_new_tokens=4))
        step()
        if unpopular.first_admit_step is not None:
            return unpopular.first_admit_step - unpopular.enqueue_step
    return None  # never admitted


def test_lpm_without_fairness_starves_the_unpopular_prefix():
    assert wait_of_unpopular(max_wait_steps=None) is None


@pytest.mark.parametrize("bound", [5, 20, 50])
def test_max_wait_steps_bounds_the_wait(bound):
    wait = wait_of_unpopular(max_wait_steps=bound)
    assert wait is not None and bound <= wait <= bound + 5  # + time for a running slot to free up


def test_max_wait_seconds_bounds_the_wait():
    wait = wait_of_unpopular(max_wait_steps=None, max_wait_seconds=30.0)
    assert wait is not None and wait <= 30


def test_fcfs_does_not_starve():
    assert wait_of_unpopular("fcfs", max_wait_steps=None) is not None
