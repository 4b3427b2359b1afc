"""NOTE [ Message pacing ]: how many batches the next message carries, from the tasks' times."""

import pytest

from server import message_pacing
from server.message_pacing import FILL_TARGET_S, MessagePacing

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(message_pacing.time, "monotonic", clock)
    return clock


def run_task(pacing, clock, task_id, rows, seconds):
    pacing.assigned(task_id)
    clock.now += seconds
    pacing.answered(task_id, rows)


def started_counts(pacing, messages):
    """The batch counts of the next ``messages`` messages started."""
    return [pacing.next_count() for _ in range(messages)]


def test_the_first_message_carries_one_batch():
    assert MessagePacing(most=64, batch_size=64, workers=2).next_count() == 1


def test_cheap_rows_grow_to_whole_messages_by_doubling_and_costly_ones_travel_alone(clock):
    cheap = MessagePacing(most=64, batch_size=64, workers=2)
    assert cheap.next_count() == 1
    run_task(cheap, clock, 0, rows=64, seconds=64 * 2e-6)  # 2 us a row: MNIST from memory
    assert started_counts(cheap, 8) == [2, 4, 8, 16, 32, 64, 64, 64]
    costly = MessagePacing(most=64, batch_size=16, workers=1)
    costly.next_count()
    run_task(costly, clock, 0, rows=16, seconds=16 * 0.01)  # 10 ms a sample: a slow Python dataset
    assert started_counts(costly, 3) == [1, 1, 1]


def test_the_count_fills_the_target_time_with_every_worker(clock):
    pacing = MessagePacing(most=1000, batch_size=10, workers=2)
    run_task(pacing, clock, 0, rows=10, seconds=10 * 1e-4)  # a batch: 1 ms of one worker, 0.5 ms of two
    counts = started_counts(pacing, 12)
    assert counts[:7] == [1, 2, 4, 8, 16, 32, 64]  # doubling up to the target...
    assert abs(counts[-1] - FILL_TARGET_S / 0.5e-3) <= 1  # ...which stays (floor of a float quotient)


def test_a_warm_up_task_is_forgotten_at_once_and_a_costlier_phase_followed_smoothly(clock):
    pacing = MessagePacing(most=64, batch_size=64, workers=2)
    run_task(pacing, clock, 0, rows=64, seconds=64 * 0.01)  # the first task opened the data
    run_task(pacing, clock, 1, rows=64, seconds=64 * 2e-6)
    assert pacing.row_seconds == pytest.approx(2e-6)
    run_task(pacing, clock, 2, rows=64, seconds=64 * 1e-3)
    assert 2e-6 < pacing.row_seconds < 1e-3


def test_the_estimate_follows_the_cost_and_forgets_dead_workers_tasks(clock):
    pacing = MessagePacing(most=64, batch_size=64, workers=2)
    run_task(pacing, clock, 0, rows=64, seconds=64 * 2e-6)
    for task_id in range(1, 20):  # the samples became costly (another part of the data)
        run_task(pacing, clock, task_id, rows=64, seconds=64 * 0.01)
    assert pacing.next_count() == 1
    pacing.assigned(99)
    pacing.forget([99])
    clock.now += 1000
    pacing.answered(99, 64)  # a dead worker's task: no time to learn from
    assert pacing.next_count() == 1 and pacing.row_seconds == pytest.approx(0.01, rel=0.01)
