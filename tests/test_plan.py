"""Batch plans: exact epochs, Caffe's wrap-around, and content fixed by (seed, epoch, k)."""

import numpy as np
import pytest

from server.plan import EpochPlan

pytestmark = pytest.mark.unit


def positions(plan, batches):
    return [(int(e), int(i)) for k in range(batches)
            for e, i in zip(plan.batch(k).epochs, plan.batch(k).indices)]


def test_every_sample_once_per_epoch_with_wrap_around_like_caffe():
    plan = EpochPlan(dataset_size=10, batch_size=4, seed=3, shuffle=True, epochs=3)
    assert plan.batch_count == 8  # 30 samples in batches of 4, the last completed from epoch 3
    seen = positions(plan, plan.batch_count)
    for epoch in range(3):
        assert sorted(i for e, i in seen if e == epoch) == list(range(10))
    assert [e for e, _ in seen[-2:]] == [3, 3]


def test_each_epoch_has_its_own_permutation():
    plan = EpochPlan(100, 10, seed=0, shuffle=True)
    assert not np.array_equal(plan.epoch_order(0), plan.epoch_order(1))
    assert sorted(plan.epoch_order(1).tolist()) == list(range(100))


def test_without_shuffle_batches_follow_dataset_order():
    plan = EpochPlan(7, 3, seed=0, shuffle=False)
    assert [plan.batch(k).indices.tolist() for k in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]


def test_batch_content_depends_only_on_seed_and_position():
    fresh = EpochPlan(50, 8, seed=11, shuffle=True)
    other = EpochPlan(50, 8, seed=11, shuffle=True)
    for k in (12, 0, 7, 12, 3):  # any order of asking, any instance
        a, b = fresh.batch(k), other.batch(12 if k == 12 else k)
        assert np.array_equal(a.indices, b.indices) and np.array_equal(a.draws, b.draws)
    assert not np.array_equal(EpochPlan(50, 8, seed=12, shuffle=True).batch(3).indices, fresh.batch(3).indices)


def test_draws_are_uniform_and_distinct_per_batch():
    plan = EpochPlan(10, 1000, seed=0, shuffle=False)
    a, b = plan.batch(0).draws, plan.batch(1).draws
    assert a.shape == (1000, 3) and np.all((a >= 0) & (a < 1))
    assert not np.array_equal(a, b)


def test_shards_split_every_epoch_exactly_between_them():
    from server.plan import Shard
    size, shards = 23, 3  # sizes 8, 8, 7
    plans = [EpochPlan(size, 4, seed=2, shuffle=True, epochs=2, shard=Shard(i, shards)) for i in range(shards)]
    assert [p.local_size for p in plans] == [8, 8, 7]
    for epoch in range(2):
        seen = []
        for plan in plans:
            positions = np.arange(epoch * plan.local_size, (epoch + 1) * plan.local_size)
            indices, epochs = plan.locate(positions)
            assert set(epochs.tolist()) == {epoch}
            seen.extend(indices.tolist())
        assert sorted(seen) == list(range(size))
    assert not np.array_equal(plans[0].draws(0), plans[1].draws(0))


def test_impossible_shards_are_refused():
    import pytest
    from server.plan import Shard
    with pytest.raises(ValueError, match="the index must be in 0..1"):
        EpochPlan(10, 2, 0, True, shard=Shard(2, 2))
    with pytest.raises(ValueError, match="shard 4/5 of 3 samples is empty: use at most 3 shards"):
        EpochPlan(3, 2, 0, True, shard=Shard(4, 5))
