"""Batch assembly without processes: which tasks a batch needs before it may be sent."""

import numpy as np
import pytest

from server.assembly import BatchAssembly, PackTask, RowTask, TooFewGoodSamples
from server.plan import EpochPlan

pytestmark = pytest.mark.unit


def assembly(packing):
    plan = EpochPlan(20, 4, seed=1, shuffle=True, epochs=None)
    return BatchAssembly(plan, describe=lambda index: "sample %d" % index, packing=packing)


def test_a_filled_batch_is_complete_without_packing():
    batches = assembly(packing=False)
    task = batches.start(slot=0)[0]
    assert batches.filled(task, {}) is None
    assert batches.complete(task.seq)


def test_with_packing_a_filled_batch_waits_for_its_pack_task():
    batches = assembly(packing=True)
    task = batches.start(slot=5)[0]
    pack = batches.filled(task, {})
    assert isinstance(pack, PackTask) and (pack.seq, pack.slot) == (task.seq, 5)
    assert not batches.complete(task.seq)
    batches.packed(pack, {"data": [100]})
    assert batches.complete(task.seq)
    assert batches.pop(task.seq).packed_lengths == {"data": [100]}


def test_with_packing_bad_rows_are_refilled_before_the_batch_is_packed():
    batches = assembly(packing=True)
    task = batches.start(slot=0)[0]
    refill = batches.filled(task, {2: "unreadable"})
    assert isinstance(refill, RowTask) and refill.rows.tolist() == [2]
    assert not batches.complete(task.seq)
    pack = batches.filled(refill, {})
    assert isinstance(pack, PackTask) and pack.task_id not in (task.task_id, refill.task_id)
    assert np.unique(batches.pending[task.seq].indices).size == 4


def started_with_crashes(prove_bad):
    plan = EpochPlan(20, 4, seed=1, shuffle=True, epochs=None)
    batches = BatchAssembly(plan, describe=lambda index: "sample %d" % index, prove_bad=prove_bad)
    task = batches.start(slot=0)[0]
    suspect = int(task.indices[2])
    first = batches.crashed(task, suspect)
    return batches, task, suspect, batches.crashed(first, suspect)


def test_a_sample_in_flight_at_two_deaths_that_reads_fine_alone_is_not_skipped():
    probed = []
    batches, task, suspect, retry = started_with_crashes(lambda index: probed.append(index))
    assert probed == [suspect] and not batches.bad_samples and batches.skipped == 0
    assert sorted(retry.rows.tolist()) == [0, 1, 2, 3] and suspect in retry.indices.tolist()
    assert retry.sample_by_sample  # so that another crash names its sample
    assert np.array_equal(batches.pending[task.seq].indices, task.indices)  # nothing replaced


def test_a_sample_proven_bad_alone_is_skipped_and_its_row_refilled_with_its_own_draws():
    batches, task, suspect, retry = started_with_crashes(lambda index: "killed by signal SIGSEGV")
    assert "reading it alone killed by signal SIGSEGV" in batches.bad_samples[suspect]
    assert batches.skipped == 1 and suspect not in retry.indices.tolist()
    assert sorted(retry.rows.tolist()) == [0, 1, 2, 3]  # the same rows, and so the same draws
    assert batches.pending[task.seq].indices.tolist().count(suspect) == 0


def test_batches_of_one_message_take_consecutive_positions_and_their_own_draws():
    plan = EpochPlan(10, 4, seed=1, shuffle=True, epochs=2)  # 5 batches in all
    batches = BatchAssembly(plan, describe=str, batches_per_message=3)
    (first,), (last,) = batches.start(slot=0), batches.start(slot=1)
    assert (first.seq, len(first.rows), last.seq, len(last.rows)) == (0, 12, 3, 8)  # the last is short
    assert not batches.can_start
    for task, seqs in ((first, range(3)), (last, range(3, 5))):
        expected = [plan.batch(seq) for seq in seqs]
        assert np.array_equal(task.indices, np.concatenate([b.indices for b in expected]))
        assert np.array_equal(plan.row_draws(task.seq, task.rows), np.concatenate([b.draws for b in expected]))
        assert np.array_equal(plan.row_draws(task.seq, task.rows[::-1]), np.concatenate([b.draws for b in expected])[::-1])
    assert batches.pending[3].batch_count == 2


def test_when_an_epoch_holds_too_few_good_samples_for_a_batch_the_assembly_says_so_instead_of_spinning():
    plan = EpochPlan(10, 4, seed=1, shuffle=True, epochs=None)
    batches = BatchAssembly(plan, describe=str)
    for index in range(9):
        batches.mark_bad(index, "unreadable")
    with pytest.raises(TooFewGoodSamples, match="9 of the 10 samples served are bad, and a whole epoch does not "
                                                "hold the 4 good ones this batch needs"):
        batches.start(slot=0)


def test_a_message_is_filled_by_tasks_of_at_most_rows_per_task_rows():
    plan = EpochPlan(100, 4, seed=1, shuffle=True, epochs=None)
    batches = BatchAssembly(plan, describe=str, batches_per_message=5, rows_per_task=6)
    tasks = batches.start(slot=0)
    assert [task.rows.tolist() for task in tasks] == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18)),
                                                     [18, 19]]
    assert np.array_equal(np.concatenate([task.indices for task in tasks]), batches.pending[0].indices)
    for task in tasks[:-1]:
        assert batches.filled(task, {}) is None and not batches.complete(0)
    assert batches.filled(tasks[-1], {}) is None and batches.complete(0)


def test_a_message_of_consecutive_held_rows_is_sent_in_place_and_one_that_wraps_is_filled():
    """NOTE [ Rows sent in place ]: views of the held rows, no task; the message that wraps
    around the epoch's end is filled by workers as any other."""
    held = {"data": np.arange(10 * 3, dtype=np.float32).reshape(10, 3), "label": np.arange(10, dtype=np.float32)}
    plan = EpochPlan(10, 4, seed=1, shuffle=False, epochs=None)
    batches = BatchAssembly(plan, describe=lambda index: "sample %d" % index, held_rows=held)
    assert batches.start(slot=0, count=1) == []
    first = batches.pending[0]
    assert batches.complete(0) and first.indices.tolist() == [0, 1, 2, 3]
    assert np.shares_memory(first.in_place["data"], held["data"])
    assert first.in_place["data"].tolist() == held["data"][:4].tolist() and first.in_place["label"].tolist() == [0, 1, 2, 3]
    assert batches.start(slot=1, count=1) == []  # rows 4-7
    wrapping = batches.start(slot=2, count=1)  # rows 8, 9, 0, 1
    assert len(wrapping) == 1 and wrapping[0].indices.tolist() == [8, 9, 0, 1]
    assert batches.pending[2].in_place is None and not batches.complete(2)
    shuffled = BatchAssembly(EpochPlan(10, 4, seed=1, shuffle=True, epochs=None), describe=str, held_rows=held)
    assert len(shuffled.start(slot=0, count=1)) == 1  # rows in no order: gathered by a worker
