"""The slot pool: the workers' working set plus a share per connected trainer, within the budget."""

import logging

import numpy as np
import pytest

from client_layer import wire
from server.slot_pool import PINNED_PER_TRAINER, SlotPool, slot_capacity_for

pytestmark = pytest.mark.unit

SPECS = [wire.array_spec("data", np.uint8, (4, 1024 * 1024)),  # 4 MiB and a bit: 5 slots in 21 MB
         wire.array_spec("label", np.float32, (4,))]


def test_capacity_is_what_the_budget_holds_and_never_less_than_the_working_set():
    slot_bytes = 4 * 2**20 + 64
    assert slot_capacity_for(slot_bytes, 2, 21) == 5
    assert slot_capacity_for(slot_bytes, 2, 10**6) == 2 + PINNED_PER_TRAINER * 256  # the most trainers mapped for
    assert slot_capacity_for(slot_bytes, 8, 21) == 8


def test_each_connected_trainer_adds_its_share_of_slots_up_to_the_pool():
    pool = SlotPool(SPECS, working_slots=2, max_inflight_mb=64, packed=False)  # 15 slots
    assert pool.slots.slot_count == 15
    assert pool.spare(0) == 2
    taken = [pool.take(), pool.take()]
    assert taken == [0, 1] and pool.spare(0) == 0  # untouched slots are the last ones
    assert pool.spare(1) == PINNED_PER_TRAINER
    assert pool.spare(10) == 13  # all that is free
    pool.release(taken)
    assert pool.spare(0) == 2 and pool.take() == 1  # the most recently released first


def test_trainers_beyond_the_pool_are_logged_once_until_they_fit_again(caplog):
    budget_mb = (2 + 2 * PINNED_PER_TRAINER) * 4.0001  # the working set and 2 trainers' shares
    pool = SlotPool(SPECS, working_slots=2, max_inflight_mb=budget_mb, packed=False)
    with caplog.at_level(logging.WARNING, logger="zfeed.server"):
        for trainers in (1, 2, 3, 4, 3, 2, 3):
            pool.check_budget(trainers)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(line.startswith("trainer 3 is over the --max-inflight-mb budget") for line in lines)
    assert ("%d batch slots of 4.0 MB hold the loader workers' 2 and %d for each of 2 trainers"
            % (2 + 2 * PINNED_PER_TRAINER, PINNED_PER_TRAINER)) in lines[0]
