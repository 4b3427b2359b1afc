"""How much the server holds and moves at once: slots, messages and tasks.

Computed once at start-up from the batch's arrays, the worker count and
``--max-inflight-mb``: the slots the workers and the sender keep busy
(``slot_count_for``; a share per connected trainer comes on top, NOTE
[ Slots per trainer ] in slot_pool.py), the batches a slot and so a message
holds at most (``batches_per_message_for``; NOTE [ Batches per message ] in
assembly.py, and how many the next message carries: NOTE [ Message pacing ]),
and the rows of a task (``rows_per_task_for``).
"""

from __future__ import annotations

from typing import List

from client_layer import wire

TASKS_PER_WORKER = 2
MIN_SLOTS = 2
SEND_QUEUE_BATCHES = 8
# A slot handed to ZeroMQ comes back only once its message is written into the kernel and
# pyzmq's collector thread has said so: with fewer send slots than this, workers wait for
# that round trip at every message of many small batches.
MIN_SEND_SLOTS = 3
# NOTE [ Batches per message ] (assembly.py): small batches go out together, in messages of about
# this size (and at most --max-batches-per-message batches): enough to pay the per-message work
# (a few hundred microseconds of Python on both ends) once for many small batches, not so much
# that one trainer's share grows coarse. 2 MB messages of HDF5 rows spent more CPU per row on
# that work than on the bytes (bench.small_samples).
MESSAGE_TARGET_BYTES = 8 * 2**20
# A message is filled by tasks of about this many bytes of rows: small enough that all
# workers fill a message of costly samples together, and that a worker's death loses little.
TASK_TARGET_BYTES = 2 * 2**20
MAX_ROWS_PER_MESSAGE = 16384  # the header carries 12 bytes per sample: stay far below its limit


def slot_count_for(slot_bytes: int, workers: int, max_inflight_mb: float, batches_per_slot: int = 1) -> int:
    """Enough slots to keep every worker busy and ``SEND_QUEUE_BATCHES`` batches (in at least
    ``MIN_SEND_SLOTS`` messages) ready to send,
    within the memory budget (but never fewer than ``MIN_SLOTS``); more would only add memory
    (and, with bad samples, push their replacements further down the stream)."""
    return max(MIN_SLOTS, min(_wanted_slots(workers, batches_per_slot), int(max_inflight_mb * 2**20 // slot_bytes)))


def _wanted_slots(workers: int, batches_per_slot: int) -> int:
    return TASKS_PER_WORKER * workers + max(MIN_SEND_SLOTS, -(-SEND_QUEUE_BATCHES // batches_per_slot))


def batches_per_message_for(batch_specs: List[wire.ArraySpec], batch_slot_bytes: int, workers: int,
                            max_inflight_mb: float, most: int) -> int:
    """How many batches of ``batch_specs`` one message carries: as many as fit
    ``MESSAGE_TARGET_BYTES``, at most ``most``, each array of the message in one frame (see
    wire.py), while the slots ``slot_count_for`` wants (``batch_slot_bytes`` per batch) fit the
    memory budget."""
    batch_bytes = max(1, sum(s.nbytes for s in batch_specs))
    largest = max(1, max(s.nbytes for s in batch_specs))
    rows = max(1, batch_specs[0].shape[0])
    wanted_slots = _wanted_slots(workers, 1)
    return max(1, min(most, MESSAGE_TARGET_BYTES // batch_bytes,
                      wire.MAX_FRAME_BYTES // largest, MAX_ROWS_PER_MESSAGE // rows,
                      int(max_inflight_mb * 2**20 // (wanted_slots * max(1, batch_slot_bytes)))))


def rows_per_task_for(batch_bytes: int, batch_size: int) -> int:
    """Rows of one task: about ``TASK_TARGET_BYTES`` of batches of ``batch_bytes``."""
    return max(1, TASK_TARGET_BYTES * batch_size // max(1, batch_bytes))
