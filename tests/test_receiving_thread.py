"""NOTE [ The receiving thread yields ]: a BatchClient's ZeroMQ I/O thread runs under SCHED_BATCH
where the process may set it, and nothing is asked of ZeroMQ where it may not."""

import os

import pytest
import zmq

from client_layer import BatchClient, receiving_thread
from harness.children import free_port

pytestmark = pytest.mark.unit


def zeromq_io_threads():
    """Thread ids of this process's ZeroMQ I/O threads (libzmq names them ZMQbg/IO/N)."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/comm" % tid) as comm:
                if comm.read().startswith("ZMQbg/IO/"):
                    found.add(int(tid))
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return found


def test_the_clients_io_thread_runs_under_sched_batch():
    before = zeromq_io_threads()
    with BatchClient("tcp://127.0.0.1:%d" % free_port(), timeout_s=1):
        started = zeromq_io_threads() - before
        assert len(started) == 1
        assert os.sched_getscheduler(started.pop()) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own thread is left as it was


def test_where_the_policy_is_not_allowed_zeromq_is_asked_nothing(monkeypatch):
    monkeypatch.setattr(receiving_thread, "_allowed", False)
    context = zmq.Context()
    try:
        assert receiving_thread.yield_to_caller(context) is False
        assert context.get(zmq.THREAD_SCHED_POLICY) == -1  # libzmq's default: inherit
    finally:
        context.term()
