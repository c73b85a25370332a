"""Group-DRO on per-sample losses: the exponentiated-gradient update, the hard worst-group mode, ERM, and the
split of one global batch over ranks (all-reduced group sums) giving the same loss and gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuroradfm.dro import GroupDRO

GROUPS = ["site-A", "site-B", "site-C"]


def test_exponentiated_update_follows_sagawa():
    dro = GroupDRO(GROUPS, "exponentiated", eta_q=0.5, adjustment=1.0, group_sizes=[4, 16, 100])
    losses = torch.tensor([1.0, 3.0, 2.0, 0.5, 4.0], requires_grad=True)
    ids = torch.tensor([0, 0, 1, 2, 2])
    robust = dro.update(losses, ids)
    means = torch.tensor([2.0, 2.0, 2.25], dtype=torch.float64)
    adjusted = means + 1.0 / torch.tensor([4.0, 16.0, 100.0], dtype=torch.float64).sqrt()
    q = torch.full((3,), 1 / 3, dtype=torch.float64) * torch.exp(0.5 * adjusted)
    q = q / q.sum()
    torch.testing.assert_close(dro.q, q)
    assert robust.item() == pytest.approx(float(q @ means), rel=1e-6)
    robust.backward()  # d robust / d l_i = q_g(i) / n_g(i)
    expected = torch.tensor([q[0] / 2, q[0] / 2, q[1], q[2] / 2, q[2] / 2], dtype=torch.float32)
    torch.testing.assert_close(losses.grad, expected)
    torch.testing.assert_close(dro.last.group_losses, means)


def test_q_moves_toward_the_worst_group_and_a_group_never_seen_stays_neutral():
    dro = GroupDRO(GROUPS, "exponentiated", eta_q=0.1)
    for _ in range(20):
        dro.update(torch.tensor([0.2, 0.3, 1.5, 1.4]), torch.tensor([0, 0, 1, 1]))
    q = dro.q.tolist()
    assert q[1] > 0.5 > q[0] and sum(q) == pytest.approx(1.0)
    # C never seen: it takes the mean of the others' losses (0.25, 1.45) at every step
    assert q[2] == pytest.approx(q[0] * math.exp(20 * 0.1 * (0.85 - 0.25)), rel=1e-6)
    assert q[2] == pytest.approx(q[1] * math.exp(20 * 0.1 * (0.85 - 1.45)), rel=1e-6)
    loss = dro.update(torch.tensor([1.0, 3.0], requires_grad=True), torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(2.0)  # only group 0 present: its mean, whatever q says
    assert dro.recent.tolist()[:2] == pytest.approx([2.0, 1.45])  # B absent: its most recent loss


def test_q_does_not_favour_the_groups_sampled_more_often():
    """Regression: with small batches a minority group is absent from most batches. Updating only the present
    groups' q (exp(eta L) > 1 for them, 1 for the absent) drifted q toward the FREQUENT groups even at equal
    losses; an absent group now takes its most recent measured loss."""
    dro = GroupDRO(["minority", "majority"], "exponentiated", eta_q=0.5)
    for step in range(40):  # equal losses; the minority is in one batch of four
        ids = torch.tensor([0, 1, 1, 1]) if step % 4 == 0 else torch.tensor([1, 1, 1, 1])
        dro.update(torch.full((4,), 0.5), ids)
    assert dro.q.tolist() == pytest.approx([0.5, 0.5], abs=1e-9)
    dro = GroupDRO(["minority", "majority"], "exponentiated", eta_q=0.5)
    for step in range(40):  # the rarely sampled group has the higher loss: q moves to it
        ids = torch.tensor([0, 1, 1, 1]) if step % 4 == 0 else torch.tensor([1, 1, 1, 1])
        dro.update(torch.where(ids == 0, 0.8, 0.5), ids)
    assert dro.q[0] > 0.9


def test_worst_group_mode_and_erm():
    worst = GroupDRO(GROUPS, "worst-group")
    loss = worst.update(torch.tensor([1.0, 5.0, 2.0, 2.5]), torch.tensor([0, 0, 1, 2]))
    assert worst.q.tolist() == [1.0, 0.0, 0.0] and loss.item() == pytest.approx(3.0)
    erm = GroupDRO(GROUPS, "erm")
    loss = erm.update(torch.tensor([1.0, 5.0, 2.0, 2.5]), torch.tensor([0, 0, 1, 2]))
    assert loss.item() == pytest.approx(2.625) and torch.allclose(erm.q, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_sampling_mode_draws_cases_from_q_and_weights_them_equally():
    dro = GroupDRO(GROUPS, "exponentiated", eta_q=1.0, sampling=True)
    assert dro.sampling and not dro.active
    loss = dro.update(torch.tensor([1.0, 5.0, 2.0, 2.5]), torch.tensor([0, 0, 1, 2]))
    assert loss.item() == pytest.approx(2.625)  # the plain mean: q already chose the cases
    assert dro.q[0] > dro.q[2] > dro.q[1]  # q still follows the group losses (3.0, 2.0, 2.5)
    dro.q = torch.tensor([0.7, 0.3, 0.0], dtype=torch.float64)
    group_ids = [0, 0, 0, 1, 1, 2, 2, 2]
    drawn = dro.q_sampled_cases(group_ids, 4000, seed=5)
    assert drawn == dro.q_sampled_cases(group_ids, 4000, seed=5)  # a function of (q, seed): same on every rank
    groups = np.bincount([group_ids[i] for i in drawn], minlength=3) / 4000
    assert groups == pytest.approx([0.7, 0.3, 0.0], abs=0.03)
    assert np.bincount(drawn, minlength=8)[:3] / drawn.count(0) == pytest.approx([1, 1, 1], abs=0.15)  # uniform
    dro.q = torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64)  # group 2 has no case: q renormalised over 0, 1
    cases = np.bincount(dro.q_sampled_cases([0, 1, 1], 1000, seed=1), minlength=3) / 1000
    assert cases == pytest.approx([0.5, 0.25, 0.25], abs=0.05)
    assert not GroupDRO(GROUPS, "erm", sampling=True).sampling


def test_single_group_degenerates_to_erm_with_a_warning():
    with pytest.warns(UserWarning, match="single group"):
        dro = GroupDRO(["site-A"], "exponentiated")
    assert dro.mode == "erm" and not dro.active


def test_global_batch_split_over_ranks_gives_the_same_loss_gradient_and_q():
    torch.manual_seed(0)
    losses = torch.rand(8, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 1, 1, 2, 0, 0, 2, 1])
    whole = GroupDRO(GROUPS, "exponentiated", eta_q=1.0)
    whole.update(losses, ids).backward()
    reference = losses.grad.clone()
    losses.grad = None
    halves = [slice(0, 4), slice(4, 8)]
    probe = GroupDRO(GROUPS)
    totals = [torch.cat(probe.group_totals(losses[h], ids[h])) for h in halves]
    global_total = totals[0] + totals[1]  # what all_reduce(SUM) returns on every rank
    ranks = [GroupDRO(GROUPS, "exponentiated", eta_q=1.0, all_reduce=lambda t: global_total.clone())
             for _ in halves]
    local = [r.update(losses[h], ids[h]) * 2 for r, h in zip(ranks, halves)]  # x world size, as DDP averages
    (sum(local) / 2).backward()
    torch.testing.assert_close(losses.grad, reference)
    torch.testing.assert_close(ranks[0].q, whole.q)
    torch.testing.assert_close(ranks[1].q, whole.q)


def test_state_round_trip_and_mismatch():
    dro = GroupDRO(GROUPS, "exponentiated", eta_q=1.0)
    dro.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    other = GroupDRO(GROUPS, "exponentiated", eta_q=1.0)
    other.load_state_dict(dro.state_dict())
    torch.testing.assert_close(other.q, dro.q)
    torch.testing.assert_close(other.recent, dro.recent, equal_nan=True)
    with pytest.raises(ValueError, match="groups"):
        GroupDRO(["x", "y"], "exponentiated").load_state_dict(dro.state_dict())
    with pytest.raises(ValueError, match="group ids"):
        dro.update(torch.tensor([1.0]), torch.tensor([3]))
