"""Group-relative advantages: zero-sum per group, normalization, GPG's scaling."""

import pytest
import torch

from asympo.algo import gpg_advantages, group_advantages


@pytest.mark.parametrize("norm", ["std", "none"])
def test_advantages_are_zero_sum_in_every_group(norm):
    rewards = torch.rand(16, 8, generator=torch.Generator().manual_seed(0))
    A = group_advantages(rewards, norm=norm)
    assert A.shape == rewards.shape
    torch.testing.assert_close(A.sum(dim=1), torch.zeros(16), atol=1e-5, rtol=0)


def test_std_normalization_matches_definition():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    A = group_advantages(rewards)
    centered = rewards - rewards.mean(1, keepdim=True)
    torch.testing.assert_close(A, centered / (rewards.std(1, keepdim=True) + 1e-6))
    torch.testing.assert_close(group_advantages(rewards, norm="none"), centered)


def test_equal_rewards_give_zero_advantage_and_singletons_are_zero():
    A = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(A, torch.zeros(2, 3))
    assert torch.equal(group_advantages(torch.tensor([[3.0], [1.0]])), torch.zeros(2, 1))


def test_gpg_advantage_scale():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    A = gpg_advantages(rewards)
    # N = 8 responses, one with r != 0: kappa = 8.
    torch.testing.assert_close(A, 8.0 * (rewards - rewards.mean(1, keepdim=True)))
    torch.testing.assert_close(A.sum(1), torch.zeros(2))
    # No nonzero reward at all: kappa falls back to N / 1 and advantages are all zero.
    assert torch.equal(gpg_advantages(torch.zeros(2, 4)), torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("rewards", "kwargs", "message"),
    [
        (torch.zeros(4), {}, "shape"),
        (torch.tensor([[1.0, float("nan")]]), {}, "NaN"),
        (torch.zeros(2, 2), {"norm": "max"}, "norm"),
    ],
)
def test_bad_input_is_refused_clearly(rewards, kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, **kwargs)
