"""Stride scheduling of free channels between resellers, without I/O."""

from __future__ import annotations

from dispatcher.fairness import AGING_EVERY, Share, allocate, oldest_quota


def test_equal_weights_split_evenly_and_deterministically() -> None:
    shares = {"a": Share(), "b": Share(), "c": Share()}
    assert allocate(7, shares) == {"a": 3, "b": 2, "c": 2}


def test_weights_split_in_proportion() -> None:
    shares = {"big": Share(weight=3.0), "small": Share(weight=1.0)}
    assert allocate(8, shares) == {"big": 6, "small": 2}


def test_the_reseller_served_least_goes_first() -> None:
    shares = {"a": Share(vtime=10.0), "b": Share(vtime=3.0)}
    assert allocate(1, shares) == {"b": 1}
    assert allocate(9, shares) == {"a": 1, "b": 8}


def test_one_slot_at_a_time_alternates() -> None:
    shares = {"a": Share(), "b": Share()}
    order = []
    for _ in range(6):
        (winner,) = allocate(1, shares)
        shares[winner].charge(1)
        order.append(winner)
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_no_shares_no_slots() -> None:
    assert allocate(5, {}) == {}


def test_every_fifth_claim_of_a_reseller_is_its_oldest() -> None:
    assert AGING_EVERY == 5
    assert oldest_quota(0, 4) == 0
    assert oldest_quota(0, 5) == 1
    assert oldest_quota(4, 1) == 1
    assert oldest_quota(3, 12) == 3  # claims 4..15 include the 5th, 10th and 15th
    total = sum(oldest_quota(n, 1) for n in range(100))
    assert total == 100 // AGING_EVERY
