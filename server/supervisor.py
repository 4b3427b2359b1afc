"""The data server's main loop: hands batch work to loader workers, sends batches in order.

NOTE [ Batch life cycle ]
A batch ``seq`` takes a free slot of shared memory and its positions of the
stream (server/assembly.py); the task of filling its rows goes to the least
busy worker, which writes every sample straight into the slot and answers.
With ``--compress`` a filled batch goes to a worker once more, which
compresses its frames into the slot's packed room. The supervisor sends
complete batches in ``seq`` order (so test-phase
batches leave in dataset order whatever the worker count) with zero-copy
frames, and the slot is free again once ZeroMQ's tracker says it is done with
every frame (which is not yet the kernel: NOTE [ Bytes ZeroMQ holds ] in
sender.py). The slots are the only batch memory, so
``--max-inflight-mb`` bounds it in bytes; ZeroMQ's own queue never holds more
than the slots.
How many slots may be in use: NOTE [ Slots per trainer ] (server/slot_pool.py).

NOTE [ Worker death ]
A worker's pipe and its process sentinel both wake the loop, so a death is
seen at once. The supervisor logs which worker died, how, and which sample
it was reading; starts a replacement with the same id; and re-issues the
dead worker's unfinished tasks with the same positions and draws. A sample
that was being read in ``MAX_CRASHES`` deaths is read once more, alone, in a
disposable probe process (``worker_pool.probe_sample``): only if that fails
too is it treated as bad (skipped, or fatal with ``--on-bad-sample fail``),
so a worker killed from outside never costs a good sample. Workers that keep dying without
finishing anything (``MAX_DEATHS_WITHOUT_PROGRESS``) stop the server.

NOTE [ Shutdown protocol ]
SIGTERM or SIGINT sets a flag that the loop checks at least every
``POLL_IDLE_MS``, and starts the shutdown deadline
(``shutdown_deadline.SHUTDOWN_DEADLINE_S``, within Docker's default grace
period of 10 s). The server then stops handing out work, saves its resume
state (``--state-dir``), tells every worker to exit, joins each for
``worker_pool.WORKER_JOIN_S``, terminates and then kills any that remain,
closes its socket with ``sender.SHUTDOWN_LINGER_MS`` so queued bytes can
still leave, closes ZeroMQ, and exits with status 0. Closing ZeroMQ waits
for its I/O thread, which may be stuck in a host name lookup of a
``--connect`` peer that is gone (30-40 s in a container): the server waits
the linger and ``TERM_MARGIN_S`` for it, then exits anyway, saying so. Should
any step hang, the deadline ends the process all the same, naming the step.
Workers also die with the supervisor (PDEATHSIG and a ppid check), and the
slots are an anonymous mapping, so even SIGKILL leaves nothing behind. With
``--epochs`` the server exits the same way once every batch has left.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import deque
from typing import Deque, Dict, Optional

import numpy as np
import zmq

from client_layer import wire
from server import ready_file
from server.assembly import BatchAssembly, PackTask, PendingBatch, RowTask, Task, TooFewGoodSamples
from server.batch_buffer import slot_bytes_for
from server.config import PreparedData, ServerConfig
from server.curve import CurveServer
from server.message_pacing import MessagePacing
from server.metrics import ServerMetrics
from server.plan import EpochPlan
from server.resume_state import ResumeState
from server.sender import SHUTDOWN_LINGER_MS, BatchSender, SenderError, new_server_id
from server.sizing import TASKS_PER_WORKER, batches_per_message_for, rows_per_task_for, slot_count_for
from server.slot_pool import SlotPool
from server.shutdown_deadline import ShutdownDeadline
from server.throughput import ThroughputLog
from server.worker import WorkerSetup
from server.worker_pool import WorkerHandle, WorkerPool, describe_exit, new_progress, probe_sample

log = logging.getLogger("zfeed.server")

POLL_IDLE_MS = 100
POLL_RELEASE_MS = 2
MAX_DEATHS_WITHOUT_PROGRESS = 5
TERM_MARGIN_S = 1.0  # closing ZeroMQ may take the socket's linger and this


class ServerError(RuntimeError):
    """The server cannot go on; the message says why."""


class DataServer:
    """Serves ``prepared`` data as ``config`` says until done or told to stop."""

    def __init__(self, config: ServerConfig, prepared: PreparedData):
        self.config = config
        self.prepared = prepared
        prepared.source.before_fork(config.shuffle)
        self.plan = EpochPlan(len(prepared.source), config.batch_size, config.seed, config.shuffle,
                              config.epochs, config.shard, getattr(prepared.source, "shuffled_order", None))
        batch_specs = prepared.specs
        self.batch_bytes = sum(s.nbytes for s in batch_specs)
        self.codec = config.codec()
        batch_slot_bytes = slot_bytes_for(batch_specs, self.codec is not None)
        self.batches_per_message = batches_per_message_for(batch_specs, batch_slot_bytes, config.workers,
                                                           config.max_inflight_mb, config.max_batches_per_message)
        # The arrays of a slot: one message's batches.
        self.specs = prepared.layout.batch_specs(config.batch_size * self.batches_per_message)
        slot_bytes = slot_bytes_for(self.specs, packed=self.codec is not None)
        working_slots = slot_count_for(slot_bytes, config.workers, config.max_inflight_mb, self.batches_per_message)
        self.slot_pool = SlotPool(self.specs, working_slots, config.max_inflight_mb, packed=self.codec is not None)
        self.slots = self.slot_pool.slots
        self.resume = ResumeState.for_config(config, len(prepared.source))
        saved = self.resume.load() if self.resume else None
        self.resumed = saved is not None  # said in every header's origin (client_layer/repeats.py)
        first_seq, first_position = saved or (0, 0)
        self.assembly = BatchAssembly(self.plan, prepared.source.describe, first_seq, first_position,
                                      packing=self.codec is not None,
                                      batches_per_message=self.batches_per_message,
                                      prove_bad=lambda index: probe_sample(self._worker_setup(-1), index),
                                      rows_per_task=rows_per_task_for(self.batch_bytes, config.batch_size),
                                      held_rows=self._rows_to_send_in_place())
        self.pacing = MessagePacing(self.batches_per_message, config.batch_size, config.workers)
        self.next_send = first_seq
        self.queue: Deque[Task] = deque()
        self.stop_signal: Optional[int] = None
        self.deadline = ShutdownDeadline()
        self.deaths_since_progress = 0
        self.throughput = ThroughputLog(config.log_interval_s, config.batch_size)
        self.progress = new_progress(config.workers)
        self.metrics: Optional[ServerMetrics] = None
        self.curve: Optional[CurveServer] = None  # these three exist while run() runs
        self.sender: Optional[BatchSender] = None
        self._skipped_reported = 0

    def _rows_to_send_in_place(self) -> Optional[Dict[str, np.ndarray]]:
        """The source's held rows when a message can be sent from them as they are (NOTE [ Rows
        sent in place ], assembly.py): no transform, no compression, the same arrays as the specs."""
        if self.codec is not None or self.prepared.layout.transform is not None:
            return None
        held = self.prepared.source.held_rows()
        if held is None or sorted(held) != sorted(spec.name for spec in self.specs) or not all(
                held[s.name].dtype == s.dtype and held[s.name].shape[1:] == s.shape[1:] for s in self.specs):
            return None
        log.info("holding the rows of all %d samples in memory (%.0f MB): batches of consecutive rows are sent "
                 "from there", len(self.prepared.source), sum(a.nbytes for a in held.values()) / 2**20)
        return held

    def _worker_setup(self, worker_id: int) -> WorkerSetup:
        return WorkerSetup(worker_id, self.prepared.source, self.prepared.layout, self.plan, self.slots,
                           self.progress, os.getpid(), self.specs, self.codec)

    # -- work in -----------------------------------------------------------------------------

    def _start_batches(self, sender: BatchSender) -> None:
        self.slot_pool.check_budget(sender.trainers)
        spare = self.slot_pool.spare(sender.trainers)
        while spare > 0 and self.assembly.can_start and len(self.queue) < len(self.pool.workers):
            self.queue.extend(self.assembly.start(self.slot_pool.take(), self.pacing.next_count()))
            spare -= 1

    def _assign(self) -> None:
        while self.queue:
            handle = self.pool.least_busy()
            if len(handle.outstanding) >= TASKS_PER_WORKER:
                return
            task = self.queue.popleft()
            if isinstance(task, RowTask):  # pack tasks say nothing of what a row costs to fill
                self.pacing.assigned(task.task_id)
            self.pool.assign(handle, task)

    def _collect(self, handle: WorkerHandle) -> None:
        """Take every answer waiting on ``handle``'s pipe, then deal with its death if it died."""
        while handle.connection.poll():
            try:
                task_id, answer = handle.connection.recv()
            except (EOFError, OSError):
                break
            task = handle.outstanding.pop(task_id)
            self.deaths_since_progress = 0
            if isinstance(task, PackTask):
                self.assembly.packed(task, answer)
                continue
            bad_rows = answer
            self.pacing.answered(task_id, len(task.rows))
            if bad_rows and self.config.on_bad_sample == "fail":
                raise ServerError("cannot load %s (--on-bad-sample skip would skip it)"
                                  % next(iter(bad_rows.values())))
            follow_up = self.assembly.filled(task, bad_rows)
            if follow_up is not None:
                self.queue.appendleft(follow_up)  # it holds back every later batch
        if not handle.process.is_alive():
            self._on_death(handle)

    def _on_death(self, handle: WorkerHandle) -> None:
        crashing = self.pool.crashed_index(handle)
        handle.process.join(1.0)
        reading = " while reading %s" % self.prepared.source.describe(crashing) if crashing is not None else ""
        tasks = list(handle.outstanding.values())
        self.pacing.forget(handle.outstanding)
        log.error("loader worker %d (pid %d) %s%s; restarting it and re-issuing %d unfinished tasks",
                  handle.worker_id, handle.process.pid, describe_exit(handle.process), reading, len(tasks))
        if self.pool.died_working(handle):
            self.deaths_since_progress += 1
        if self.deaths_since_progress > MAX_DEATHS_WITHOUT_PROGRESS:
            raise ServerError("loader workers died %d times in a row without finishing any work; last: "
                              "worker %d %s%s" % (self.deaths_since_progress, handle.worker_id,
                                                  describe_exit(handle.process), reading))
        for task in reversed(tasks):
            if isinstance(task, PackTask):
                self.queue.appendleft(task)
                continue
            index = crashing if crashing is not None and crashing in task.indices.tolist() else None
            self.queue.appendleft(self.assembly.crashed(task, index))
            if index is not None and index in self.assembly.bad_samples and self.config.on_bad_sample == "fail":
                raise ServerError("%s: %s (--on-bad-sample skip would skip it)"
                                  % (self.prepared.source.describe(index), self.assembly.bad_samples[index]))
        self.pool.replace(handle)
        if self.metrics:
            self.metrics.restarts.inc()

    # -- batches out -------------------------------------------------------------------------

    def _send_ready(self, sender: BatchSender) -> None:
        while self.assembly.complete(self.next_send) and sender.can_send:
            batch = self.assembly.pending[self.next_send]
            rows = len(batch.indices)
            arrays = batch.in_place or {name: array[:rows] for name, array in self.slots.arrays(batch.slot).items()}
            packed = (self.slots.packed(batch.slot), batch.packed_lengths) if self.codec else None
            if not sender.send(batch.seq, arrays, batch.indices, batch.epochs, token=batch, packed=packed,
                               batch_rows=self.config.batch_size):
                return
            self.assembly.pop(self.next_send)
            self.next_send += batch.batch_count
            wire_bytes = self._wire_bytes(batch)
            self.throughput.sent(batch.batch_count, wire_bytes)
            if self.metrics:
                self.metrics.batches.inc(batch.batch_count)
                self.metrics.samples.inc(rows)
                self.metrics.bytes.inc(wire_bytes)

    def _wire_bytes(self, batch: PendingBatch) -> int:
        """Bytes of a message's arrays on the wire: compressed frames count as sent."""
        if batch.packed_lengths is None:
            return self.batch_bytes * batch.batch_count
        return sum(sum(lengths) for lengths in batch.packed_lengths.values())

    def _finished(self, sender: BatchSender) -> bool:
        return (not self.assembly.can_start and not self.assembly.pending and not self.queue
                and not sender.in_flight)

    def _save_resume_state(self, sender: Optional[BatchSender], force: bool = False) -> None:
        """Record where to resume: the batches that may not all be in the kernel yet count as not
        sent (see resume_state)."""
        if not self.resume:
            return
        unwritten = sender.maybe_unwritten() if sender is not None else []
        seq = min((b.seq for b in unwritten), default=self.next_send)
        position = min([b.first_position for b in unwritten] + [self.assembly.low_water_position])
        self.resume.save(seq, position, force=force)

    # -- the loop ----------------------------------------------------------------------------

    def _update_metrics(self, sender: BatchSender) -> None:
        queued = (len(self.assembly.pending) + sender.in_flight) * self.batches_per_message
        self.metrics.queued_batches.set(queued)
        self.metrics.queued_bytes.set(queued * self.batch_bytes)
        self.metrics.workers_busy.set(self.pool.busy_count())
        self.metrics.skipped.inc(self.assembly.skipped - self._skipped_reported)
        self._skipped_reported = self.assembly.skipped
        self.metrics.trainers.set(sender.trainers)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum
        self.deadline.start(status=0)  # from the signal, as the container engine counts its grace period

    def _poll(self, sender: BatchSender) -> None:
        poller = zmq.Poller()
        wake = self.pool.wake_fds()
        for fd in wake:
            poller.register(fd, zmq.POLLIN)
        if self.assembly.complete(self.next_send):
            poller.register(sender.socket, zmq.POLLOUT)
        # Slots come back only by polling ZeroMQ's trackers: poll fast only when short of slots.
        timeout = POLL_RELEASE_MS if sender.in_flight and self.slot_pool.spare(sender.trainers) <= 0 else POLL_IDLE_MS
        woken = {wake[fd] for fd, _event in poller.poll(timeout) if fd in wake}
        for handle in woken:
            self._collect(handle)

    def run(self) -> int:
        """Serve until done (exit status 0), stopped by a signal (0) or failed (raises)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.pool = WorkerPool(self._worker_setup, self.config.workers, self.progress)
        context = zmq.Context()
        try:
            sender = self._set_up(context)
            self._serve(sender)
            return 0
        finally:
            self._shut_down(self.sender, self.curve, context, failed=sys.exc_info()[0] is not None)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _set_up(self, context: zmq.Context) -> BatchSender:
        """CURVE, the socket and the metrics, each kept in ``self`` as soon as it exists (so that
        ``_shut_down`` closes what a failure leaves open); the socket is watched before it opens."""
        if self.config.curve_secret_key:
            self.curve = CurveServer(self.config.curve_secret_key, self.config.allow_client_keys)
            self.curve.start(context)
        shard = self.config.shard
        origin = wire.StreamOrigin(new_server_id(), shard.index, shard.count, self.config.seed,
                                   len(self.prepared.source), self.resumed)
        sender = self.sender = BatchSender(context, self.config.stream_id, self.specs, curve=self.curve,
                                           extra=self.prepared.layout.wire_extra(),
                                           codec_name=self.codec.name if self.codec else None, origin=origin)
        if self.config.metrics_port:
            try:
                self.metrics = ServerMetrics(self.config.metrics_port, self.config.stream_id)
            except OSError as exc:
                raise ServerError("cannot serve metrics on port %d: %s" % (self.config.metrics_port, exc))
        try:
            sender.open(self.config.bind, self.config.connect)
        except SenderError as exc:
            raise ServerError(str(exc)) from None
        self._log_serving(origin.server)
        ready_file.announce(self.config.ready_file, self.config.bind, self.config.connect,
                            self.config.metrics_port, self.config.stream_id)
        return sender

    def _log_serving(self, server_id: str) -> None:
        shard = self.config.shard
        log.info("serving %d samples%s (%s) as batches of %s on %s%s%s; seed %d; %d workers, %s"
                 " (%d batches per message); server id %s",
                 self.plan.local_size,
                 " of %d (shard %d/%d)" % (len(self.prepared.source), shard.index, shard.count)
                 if shard.count > 1 else "", self.config.source,
                 ", ".join("%s %s" % (s.name, "x".join(map(str, (self.config.batch_size,) + s.shape[1:])))
                           for s in self.specs),
                 ", ".join(self.config.bind + self.config.connect),
                 " (CURVE, %d trainer keys)" % len(self.config.allow_client_keys) if self.curve else "",
                 ", compressing with %s" % self.codec.describe() if self.codec else "", self.config.seed,
                 len(self.pool.workers),
                 self.slot_pool.describe(), self.batches_per_message, server_id)

    def _serve(self, sender: BatchSender) -> None:
        """The loop: work out to the workers, batches out in order, until done or a signal came."""
        while self.stop_signal is None and not self._finished(sender):
            try:
                self._start_batches(sender)
                self._assign()
                self._poll(sender)
            except TooFewGoodSamples as exc:
                raise ServerError(str(exc)) from None
            self._send_ready(sender)
            self.slot_pool.release(batch.slot for batch in sender.release_sent())
            self._save_resume_state(sender)
            self.throughput.maybe_log((len(self.assembly.pending) + sender.in_flight) * self.batches_per_message,
                                      self.pool.busy_count())
            if self.metrics:
                self._update_metrics(sender)
        if self.stop_signal is not None:
            log.info("%s received: stopping", signal.Signals(self.stop_signal).name)
        else:
            log.info("served %d epochs (%d batches): done", self.config.epochs, self.next_send)
        if self.assembly.skipped:
            log.warning("skipped %d samples (%d distinct bad samples)",
                        self.assembly.skipped, len(self.assembly.bad_samples))

    def _shut_down(self, sender: Optional[BatchSender], curve: Optional[CurveServer], context: zmq.Context,
                   failed: bool) -> None:
        """NOTE [ Shutdown protocol ]'s steps, each named for the deadline's message."""
        ready_file.withdraw(self.config.ready_file)  # NOTE [ Ready file ]: no longer serving
        deadline = self.deadline
        deadline.start(status=1 if failed else 0)
        deadline.step("saving the resume state")
        self._save_resume_state(sender, force=True)  # first: whatever hangs later, it is saved
        deadline.step("stopping the loader workers")
        self.pool.stop()
        if self.metrics is not None:
            deadline.step("stopping the metrics server")
            self.metrics.close()
        if sender is not None:
            deadline.step("closing the socket")
            sender.close()
        if curve is not None:
            deadline.step("stopping the CURVE authenticator")
            curve.stop()
        # context.term() waits for ZeroMQ's I/O thread, which cannot be interrupted while it resolves a
        # --connect host name: in a container whose peer has gone, a lookup of its name can take 30-40 s
        # (every resolver in resolv.conf times out, twice). Queued batches get their linger, no more.
        deadline.run_bounded("closing ZeroMQ", context.term, SHUTDOWN_LINGER_MS / 1000 + TERM_MARGIN_S,
                             "its I/O thread is likely resolving a --connect host name that no longer answers")
        deadline.finish()
