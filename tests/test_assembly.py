"""Batch assembly without processes: which tasks a batch needs before it may be sent."""

import numpy as np
import pytest

from server.assembly import BatchAssembly, PackTask, RowTask
from server.plan import EpochPlan

pytestmark = pytest.mark.unit


def assembly(packing):
    plan = EpochPlan(20, 4, seed=1, shuffle=True, epochs=None)
    return BatchAssembly(plan, describe=lambda index: "sample %d" % index, packing=packing)


def test_a_filled_batch_is_complete_without_packing():
    batches = assembly(packing=False)
    task = batches.start(slot=0)
    assert batches.filled(task, {}) is None
    assert batches.complete(task.seq)


def test_with_packing_a_filled_batch_waits_for_its_pack_task():
    batches = assembly(packing=True)
    task = batches.start(slot=5)
    pack = batches.filled(task, {})
    assert isinstance(pack, PackTask) and (pack.seq, pack.slot) == (task.seq, 5)
    assert not batches.complete(task.seq)
    batches.packed(pack, {"data": [100]})
    assert batches.complete(task.seq)
    assert batches.pop(task.seq).packed_lengths == {"data": [100]}


def test_with_packing_bad_rows_are_refilled_before_the_batch_is_packed():
    batches = assembly(packing=True)
    task = batches.start(slot=0)
    refill = batches.filled(task, {2: "unreadable"})
    assert isinstance(refill, RowTask) and refill.rows.tolist() == [2]
    assert not batches.complete(task.seq)
    pack = batches.filled(refill, {})
    assert isinstance(pack, PackTask) and pack.task_id not in (task.task_id, refill.task_id)
    assert np.unique(batches.pending[task.seq].indices).size == 4
