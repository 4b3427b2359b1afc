"""The data server's main loop: hands batches to loader workers, sends them in order.

NOTE [ Batch life cycle ]
A batch ``seq`` takes a free slot of shared memory, goes to the least busy
worker, which fills the slot and says so; the supervisor sends the slot's
arrays in ``seq`` order (so test-phase batches leave in dataset order whatever
the worker count) with zero-copy frames, and the slot is free again once
ZeroMQ's tracker says every frame has been handed to the kernel. The slots
are the only batch memory, so ``--max-inflight-mb`` bounds it in bytes;
ZeroMQ's own queue never holds more than the slots.

NOTE [ Shutdown protocol ]
SIGTERM or SIGINT sets a flag that the loop checks at least every
``POLL_IDLE_MS``. The server then stops handing out work, closes every
worker's pipe (a worker exits on EOF), joins each worker for
``WORKER_JOIN_S``, terminates and then kills any that remain, closes its
socket with ``sender.SHUTDOWN_LINGER_MS`` so queued bytes can still leave, and exits
with status 0. Workers also die with the supervisor (PDEATHSIG and a ppid
check), and the slots are an anonymous mapping, so even SIGKILL leaves
nothing behind. With ``--epochs`` the server exits the same way once every
batch has left.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import zmq

from client_layer import wire
from server.batch_buffer import BatchSlots
from server.config import PreparedData, ServerConfig
from server.plan import BatchPlan, EpochPlan
from server.sender import BatchSender, SenderError
from server.throughput import ThroughputLog
from server.worker import DONE, BatchTask, WorkerSetup, loader_worker_main

log = logging.getLogger("zfeed.server")

POLL_IDLE_MS = 100
POLL_RELEASE_MS = 2
TASKS_PER_WORKER = 2
WORKER_JOIN_S = 3.0
MIN_SLOTS = 2
SEND_QUEUE_SLOTS = 8


class ServerError(RuntimeError):
    """The server cannot go on; the message says why."""


@dataclass
class WorkerHandle:
    worker_id: int
    process: multiprocessing.Process
    connection: object
    outstanding: Dict[int, Tuple[int, BatchPlan]] = field(default_factory=dict)  # seq -> (slot, plan)


def describe_exit(process: multiprocessing.Process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return "killed by signal %s" % signal.Signals(-code).name
    return "exited with status %s" % code


class DataServer:
    """Serves ``prepared`` data as ``config`` says until done or told to stop."""

    def __init__(self, config: ServerConfig, prepared: PreparedData):
        self.config = config
        self.prepared = prepared
        self.plan = EpochPlan(len(prepared.source), config.batch_size, config.seed,
                              config.shuffle, config.epochs)
        batch = config.batch_size
        self.specs = [wire.array_spec(name, dtype, shape)
                      for name, dtype, shape in prepared.layout.batch_arrays(batch)]
        layout = [(s.name, s.dtype, s.shape) for s in self.specs]
        batch_bytes = sum(s.nbytes for s in self.specs)
        # Enough slots to keep every worker busy and a queue ready to send; more only add memory.
        wanted = TASKS_PER_WORKER * config.workers + SEND_QUEUE_SLOTS
        slot_count = max(MIN_SLOTS, min(wanted, int(config.max_inflight_mb * 2**20 // batch_bytes)))
        if slot_count * batch_bytes > config.max_inflight_mb * 2**20:
            log.warning("one batch is %.1f MB: %d of them exceed --max-inflight-mb %.0f",
                        batch_bytes / 2**20, slot_count, config.max_inflight_mb)
        self.slots = BatchSlots(layout, slot_count)
        self.batch_bytes = batch_bytes
        self.workers: List[WorkerHandle] = []
        # A stack: the most recently released slot is reused first, so idle slots stay untouched pages.
        self.free_slots: List[int] = list(range(slot_count - 1, -1, -1))
        self.filled: Dict[int, Tuple[int, BatchPlan]] = {}  # seq -> (slot, plan), waiting to be sent
        self.next_dispatch = 0
        self.next_send = 0
        self.stop_signal: Optional[int] = None
        self.throughput = ThroughputLog(config.log_interval_s, config.batch_size, batch_bytes)

    # -- workers ---------------------------------------------------------------------------

    def _start_worker(self, worker_id: int) -> WorkerHandle:
        context = multiprocessing.get_context("fork")
        ours, theirs = context.Pipe(duplex=True)
        setup = WorkerSetup(worker_id, self.prepared.source, self.prepared.layout,
                            self.slots, os.getpid())
        process = context.Process(target=loader_worker_main, args=(setup, theirs),
                                  name="zfeed-loader-%d" % worker_id, daemon=True)
        process.start()
        theirs.close()
        return WorkerHandle(worker_id, process, ours)

    def _check_workers(self) -> None:
        for handle in self.workers:
            if not handle.process.is_alive():
                raise ServerError("loader worker %d (pid %d) %s"
                                  % (handle.worker_id, handle.process.pid, describe_exit(handle.process)))

    def _stop_workers(self) -> None:
        # Forked workers hold copies of every pipe end, so closing ours is no EOF for
        # them: tell each one to stop, then close.
        for handle in self.workers:
            try:
                handle.connection.send(None)
            except OSError:
                pass  # that worker is gone already
            handle.connection.close()
        deadline = time.monotonic() + WORKER_JOIN_S
        for handle in self.workers:
            handle.process.join(max(0.0, deadline - time.monotonic()))
        for handle in self.workers:
            if handle.process.is_alive():
                log.warning("loader worker %d (pid %d) did not exit, terminating it",
                            handle.worker_id, handle.process.pid)
                handle.process.terminate()
                handle.process.join(1.0)
            if handle.process.is_alive():
                handle.process.kill()
                handle.process.join(1.0)

    # -- the loop --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        total = self.plan.batch_count
        while self.free_slots and (total is None or self.next_dispatch < total):
            handle = min(self.workers, key=lambda h: len(h.outstanding))
            if len(handle.outstanding) >= TASKS_PER_WORKER:
                return
            plan = self.plan.batch(self.next_dispatch)
            slot = self.free_slots.pop()
            handle.connection.send(BatchTask(plan.seq, slot, plan.indices, plan.draws))
            handle.outstanding[plan.seq] = (slot, plan)
            self.next_dispatch += 1

    def _collect(self, handle: WorkerHandle) -> None:
        while handle.connection.poll():
            try:
                message = handle.connection.recv()
            except (EOFError, OSError):
                handle.process.join(1.0)
                raise ServerError("loader worker %d (pid %d) %s"
                                  % (handle.worker_id, handle.process.pid, describe_exit(handle.process)))
            seq = message[1]
            slot_and_plan = handle.outstanding.pop(seq)
            if message[0] != DONE:
                raise ServerError("batch %d: cannot load %s" % (seq, message[3]))
            self.filled[seq] = slot_and_plan

    def _send_ready(self, sender: BatchSender) -> None:
        while self.next_send in self.filled and sender.can_send:
            slot, plan = self.filled.pop(self.next_send)
            sender.send(plan.seq, slot, self.slots.arrays(slot), plan.indices, plan.epochs)
            self.next_send += 1
            self.throughput.sent_batch()

    def _finished(self, sender: BatchSender) -> bool:
        total = self.plan.batch_count
        return total is not None and self.next_send >= total and not sender.in_flight

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum

    def run(self) -> int:
        """Serve until done (exit status 0), stopped by a signal (0) or failed (raises)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.workers = [self._start_worker(i) for i in range(self.config.workers)]
        context = zmq.Context()
        sender = None
        try:
            try:
                sender = BatchSender(context, self.config.stream_id, self.specs, self.config.bind,
                                     self.config.connect, send_hwm=self.slots.slot_count + 1)
            except SenderError as exc:
                raise ServerError(str(exc)) from None
            log.info("serving %d samples (%s) as batches of %s on %s; %d workers, %d batch slots of %.1f MB",
                     len(self.prepared.source), self.config.source,
                     ", ".join("%s %s" % (s.name, "x".join(map(str, s.shape))) for s in self.specs),
                     ", ".join(self.config.bind + self.config.connect), len(self.workers),
                     self.slots.slot_count, self.batch_bytes / 2**20)
            poller = zmq.Poller()
            for handle in self.workers:
                poller.register(handle.connection.fileno(), zmq.POLLIN)
            by_fd = {handle.connection.fileno(): handle for handle in self.workers}
            while self.stop_signal is None and not self._finished(sender):
                self._dispatch()
                if self.next_send in self.filled:
                    poller.register(sender.socket, zmq.POLLOUT)
                elif sender.socket in poller:
                    poller.unregister(sender.socket)
                timeout = POLL_RELEASE_MS if sender.in_flight else POLL_IDLE_MS
                for fd, _event in poller.poll(timeout):
                    if fd in by_fd:
                        self._collect(by_fd[fd])
                self._send_ready(sender)
                self.free_slots.extend(sender.release_sent())
                self._check_workers()
                self.throughput.maybe_log(len(self.filled) + sender.in_flight,
                                          sum(1 for h in self.workers if h.outstanding))
            if self.stop_signal is not None:
                log.info("%s received: stopping", signal.Signals(self.stop_signal).name)
            else:
                log.info("served %d epochs (%d batches): done", self.config.epochs, self.next_send)
            return 0
        finally:
            self._stop_workers()
            if sender is not None:
                sender.close()
            context.term()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
