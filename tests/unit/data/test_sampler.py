"""The bucketed distributed batch schedule: shapes agree across ranks and SP groups, rounding is exact,
epochs reshuffle, resume continues exactly, and the reference order mode equals the golden fixture."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from osctl.data.stream.sampler import (
    BucketBatchSampler,
    BucketMembers,
    ResumableBatches,
    reference_order,
    sample_rng,
)

# 7 buckets of uneven sizes (one smaller than a global batch), shuffled over the index
SIZES = [23, 17, 9, 5, 3, 40, 1]
BUCKETS = np.random.default_rng(3).permutation(np.repeat(np.arange(len(SIZES)), SIZES)).astype(np.int32)


def _rank_batches(sampler: BucketBatchSampler, epoch: int) -> list[np.ndarray]:
    return [sampler.step_samples(epoch, s) for s in range(sampler.steps_per_epoch)]


@pytest.mark.parametrize(("dp_size", "batch", "leftover"), [(2, 3, "drop"), (2, 3, "pad"), (4, 2, "drop"),
                                                             (3, 1, "pad"), (1, 4, "drop")])
def test_every_rank_of_a_step_gets_one_shape_and_rounding_is_as_documented(dp_size, batch, leftover):
    ranks = [BucketBatchSampler(BUCKETS, batch_size=batch, dp_size=dp_size, dp_rank=r, seed=11, leftover=leftover)
             for r in range(dp_size)]
    steps = ranks[0].steps_per_epoch
    assert all(r.steps_per_epoch == steps for r in ranks)
    g = dp_size * batch
    if leftover == "drop":
        assert steps == sum(n // g for n in SIZES)
        assert ranks[0].dropped_per_epoch == sum(n % g for n in SIZES)
        assert ranks[0].duplicated_per_epoch == 0
    else:
        assert steps == sum(-(-n // g) for n in SIZES)
        assert ranks[0].duplicated_per_epoch == sum((g - n % g) % g for n in SIZES)
    for epoch in (0, 1):
        seen: Counter[int] = Counter()
        for step in range(steps):
            parts = [r.step_samples(epoch, step) for r in ranks]
            assert all(len(p) == batch for p in parts)
            buckets = {int(BUCKETS[i]) for p in parts for i in p}
            assert len(buckets) == 1, (epoch, step, buckets)  # one shape over every rank of the step
            seen.update(int(i) for p in parts for i in p)
        total = sum(seen.values())
        assert total == steps * g
        if leftover == "drop":
            assert max(seen.values()) == 1  # nothing duplicated
            assert len(BUCKETS) - len(seen) == ranks[0].dropped_per_epoch
        else:
            assert len(seen) == len(BUCKETS)  # nothing lost
            assert total - len(BUCKETS) == ranks[0].duplicated_per_epoch


def test_sequence_parallel_groups_share_batches_and_groups_share_shapes():
    # world 8, sp 2: ranks 2k and 2k+1 form group k and pass dp_rank = rank // sp = k
    world, sp, batch = 8, 2, 2
    per_rank = [BucketBatchSampler(BUCKETS, batch_size=batch, dp_size=world // sp, dp_rank=r // sp, seed=5)
                for r in range(world)]
    for step in range(per_rank[0].steps_per_epoch):
        parts = [s.step_samples(0, step).tolist() for s in per_rank]
        for k in range(world // sp):
            assert parts[2 * k] == parts[2 * k + 1]  # the same batch inside an SP group
        assert len({int(BUCKETS[i]) for p in parts for i in p}) == 1  # the same shape (and kind) across groups


def test_epochs_reshuffle_and_the_schedule_depends_only_on_seed_and_epoch():
    a = BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, dp_rank=1, seed=9)
    b = BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, dp_rank=1, seed=9)
    assert np.array_equal(a.schedule(3), b.schedule(3))
    assert not np.array_equal(a.schedule(0), a.schedule(1))
    assert not np.array_equal(a.schedule(0), BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, seed=10).schedule(0))
    # dropped leftovers differ between epochs, so no sample is lost for good
    dropped = [set(range(len(BUCKETS))) - set(a.schedule(e).ravel().tolist()) for e in range(6)]
    assert len(set().union(*dropped)) > len(dropped[0])


def test_tickets_positions_are_unique_and_rank_independent_of_worker_state():
    samplers = [BucketBatchSampler(BUCKETS, batch_size=3, dp_size=2, dp_rank=r, seed=1) for r in (0, 1)]
    positions = [t[2] for s in samplers for step in range(s.steps_per_epoch) for t in s.tickets(2, step)]
    assert len(positions) == len(set(positions)) == samplers[0].steps_per_epoch * 6
    assert all(t[1] == 2 for t in samplers[0].tickets(2, 0))


def test_resume_mid_epoch_gives_exactly_the_remaining_batches():
    sampler = BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, dp_rank=0, seed=4)
    straight = ResumableBatches(sampler)
    stream = iter(straight)
    full = [next(stream) for _ in range(sampler.steps_per_epoch + 7)]
    resumed = ResumableBatches(BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, dp_rank=0, seed=4))
    cut = sampler.steps_per_epoch - 3
    resumed.start(0, cut)
    again = iter(resumed)
    assert [next(again) for _ in range(10)] == full[cut:]


def test_without_group_data_one_permutation_is_cut():
    s = BucketBatchSampler(BUCKETS, batch_size=4, dp_size=2, seed=2, group_data=False)
    assert s.steps_per_epoch == len(BUCKETS) // 8
    assert s.dropped_per_epoch == len(BUCKETS) % 8
    flat = s.schedule(0).ravel()
    assert len(set(flat.tolist())) == len(flat)


def test_bucket_members_and_replacements():
    members = BucketMembers(BUCKETS)
    for b, n in enumerate(SIZES):
        got = members.members(b)
        assert len(got) == n and all(BUCKETS[got] == b)
    rng = random.Random(0)
    picks = {members.random_other(0, int(members.members(0)[0]), rng) for _ in range(400)}
    assert int(members.members(0)[0]) not in picks and len(picks) == SIZES[0] - 1
    lone = int(members.members(6)[0])
    assert members.random_other(6, lone, rng) == lone


def test_sample_rng_is_a_pure_function_of_its_coordinates():
    assert sample_rng(42, 1, 7).random() == sample_rng(42, 1, 7).random()
    values = {sample_rng(42, e, p, a).random() for e in range(3) for p in range(5) for a in range(2)}
    assert len(values) == 30


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="leftover"):
        BucketBatchSampler(BUCKETS, batch_size=2, leftover="keep")
    with pytest.raises(ValueError, match="dp_rank"):
        BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, dp_rank=2)
    empty = BucketBatchSampler(np.zeros(3, np.int32), batch_size=4)
    assert empty.steps_per_epoch == 0
    with pytest.raises(ValueError, match="no step"):
        next(empty.iter_tickets())


def test_reference_order_equals_the_golden_length_grouped_sampler(golden: Path):
    fixture = json.loads((golden / "data" / "sampler.json").read_text())
    builds = {r["name"]: r for r in json.loads((golden / "data" / "builds.json").read_text())["results"]}
    for case in fixture["cases"]:
        lengths = [row[1] for row in builds[case["build_setting"]]["kept"]]
        got = reference_order(lengths, case["batch_size"], case["world_size"], grad_accum=case["gradient_accumulation_size"],
                              initial_global_step=case["initial_global_step"], group_data=case["group_data"],
                              torch_seed=42, py_rng=random.Random(fixture["python_random_seed_before_iter"]))
        assert got == case["indices"], case


def test_reference_mode_schedule_follows_the_reference_order():
    plain = BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, seed=42, order="reference", group_data=False)
    table = plain.schedule(0)
    assert table.shape == (plain.steps_per_epoch, 4) and plain.dropped_per_epoch == 0
    assert set(table.ravel().tolist()) == set(range(len(BUCKETS)))
    assert plain.duplicated_per_epoch == table.size - len(BUCKETS)
    grouped = BucketBatchSampler(BUCKETS, batch_size=2, dp_size=2, dp_rank=1, seed=42, order="reference")
    for step in range(grouped.steps_per_epoch):  # the reference homogenises each rank's batch only
        assert len({int(BUCKETS[i]) for i in grouped.step_samples(0, step)}) == 1
    assert grouped.dropped_per_epoch == len(BUCKETS) - len(np.unique(grouped.schedule(0)))
