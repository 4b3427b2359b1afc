"""The trainer's record of the batches it was handed, which drops those a restarted server sends again
(NOTE [ Batches sent again ] in client_layer/repeats.py). In process; the restarts themselves are in
tests/test_faults.py."""

import logging
from types import SimpleNamespace

import pytest

from client_layer.repeats import WINDOW, DeliveredSeqs, RepeatFilter
from client_layer.wire import StreamOrigin

pytestmark = pytest.mark.unit


def test_seqs_in_order_are_new_once():
    delivered = DeliveredSeqs(5)
    assert all(delivered.add(seq) for seq in range(5, 50))
    assert not any(delivered.add(seq) for seq in range(0, 50))
    assert delivered.low == 50


def test_seqs_out_of_order_fill_the_gaps_once():
    """A restarted server may overtake what the old one left in the buffers."""
    delivered = DeliveredSeqs(0)
    accepted = [seq for seq in [0, 1, 2, 6, 7, 3, 8, 4, 5, 6, 3, 9, 10, 2] if delivered.add(seq)]
    assert accepted == [0, 1, 2, 6, 7, 3, 8, 4, 5, 9, 10]
    assert delivered.low == 11


def test_a_gap_never_filled_costs_at_most_the_window():
    """A stream shared with other trainers leaves gaps for good: memory stays bounded."""
    delivered = DeliveredSeqs(0)
    for seq in range(1, 3 * WINDOW, 2):
        assert delivered.add(seq)
    assert delivered.low >= 3 * WINDOW - 1 - WINDOW
    assert (delivered._mask.bit_length()) <= WINDOW
    assert not delivered.add(0)


def batch(seq, server, resumed=False, shard=(0, 2), seed=7):
    return SimpleNamespace(seq=seq, origin=StreamOrigin(server, shard[0], shard[1], seed, 2000, resumed))


def handed_over(repeats, batches):
    return [(b.origin.server, b.seq) for b in batches if repeats.is_new(b)]


def test_a_resumed_server_sends_again_what_the_trainer_has_and_it_is_dropped_and_logged_once(caplog):
    repeats = RepeatFilter(lambda: "connected to tcp://a:1")
    old = [batch(seq, "old") for seq in range(0, 10)]
    # The new server resumes at 6; the old one's last two batches arrive among its first ones.
    mixed = [batch(6, "new", True), old[8], batch(7, "new", True), batch(8, "new", True), old[9],
             batch(9, "new", True), batch(10, "new", True), batch(11, "new", True)]
    with caplog.at_level(logging.INFO, logger="zfeed.client"):
        got = handed_over(repeats, old[:8] + mixed)
    assert sorted(seq for _server, seq in got) == list(range(12))
    assert repeats.repeated == 4
    assert [r.getMessage() for r in caplog.records if "dropping batches" in r.getMessage()] == [
        "dropping batches this trainer already has, from batch 6 of shard 0/2 of 2000 samples (server new, "
        "connected to tcp://a:1): a restarted server sends again what it may not have delivered; they are counted "
        "in BatchClient.repeated (1 so far)"]


def test_a_server_that_starts_afresh_is_served_from_its_first_batch_and_the_old_leftovers_too():
    """Without a state the stream starts over at batch 0: nothing of it is dropped as old."""
    repeats = RepeatFilter(lambda: "")
    got = handed_over(repeats, [batch(seq, "old") for seq in range(100, 200)]
                      + [batch(0, "fresh"), batch(198, "old"), batch(1, "fresh"), batch(199, "old")]
                      + [batch(seq, "fresh") for seq in range(2, 10)])
    assert len(got) == 100 + 4 + 8 and repeats.repeated == 0


def test_streams_are_told_apart_by_shard_and_seed_not_by_server():
    repeats = RepeatFilter(lambda: "")
    got = handed_over(repeats, [batch(0, "a"), batch(0, "b", shard=(1, 2)), batch(0, "c", seed=8),
                                batch(0, "d", resumed=True), batch(1, "d", resumed=True)])
    assert got == [("a", 0), ("b", 0), ("c", 0), ("d", 1)]


def test_batches_of_other_senders_are_all_handed_over():
    repeats = RepeatFilter(lambda: "")
    assert all(repeats.is_new(SimpleNamespace(seq=0, origin=None)) for _ in range(3))
