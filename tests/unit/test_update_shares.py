"""The update gauges: the negative part is exactly the A < 0 responses' share of the step's gradient, and
neg_share tells the naive loss from ASymPO on stale negatives."""

import math

import pytest
import torch

from asympo.algo import METHODS, group_advantages, negative_part, policy_loss, update_shares

from .test_losses import make_batch, method_kwargs

B, G, T, V = 4, 6, 5, 7


@pytest.mark.parametrize("method", METHODS)
def test_the_negative_part_is_the_full_gradient_on_negative_rows_and_nothing_elsewhere(method):
    logprobs, mask, A, behavior = make_batch(seed=3)
    kw = method_kwargs(method, behavior)
    loss, _ = policy_loss(method, logprobs, mask, A, **kw)
    (g,) = torch.autograd.grad(loss, logprobs)
    (g_neg,) = torch.autograd.grad(negative_part(method, logprobs, mask, A, **kw), logprobs)
    neg = A < 0
    valid = mask.bool()
    assert torch.allclose(g_neg[neg][valid[neg]], g[neg][valid[neg]], atol=1e-7)
    assert not g_neg[~neg].any()


def test_no_negative_response_no_part():
    logprobs, mask, _, _ = make_batch()
    assert negative_part("naive", logprobs, mask, torch.zeros(logprobs.shape[0])) is None


def test_shares_of_known_vectors():
    shares = update_shares(
        [torch.tensor([1.0, 0.0]), torch.tensor([2.0])], [torch.tensor([1.0, 1.0]), torch.tensor([2.0])]
    )
    # <g-, g> = 1 + 4, |g|^2 = 1 + 1 + 4; g+ = (0, 1, 0)
    assert shares["neg_share"] == pytest.approx(5 / 6)
    assert shares["grad_norm_neg"] == pytest.approx(math.sqrt(5))
    assert shares["grad_norm_pos"] == pytest.approx(1.0)
    assert math.isnan(update_shares([torch.zeros(2)], [torch.zeros(2)])["neg_share"])


def _shares_on_stale_negatives(method: str) -> dict:
    """A softmax policy over V tokens whose wrong answers (A < 0) are improbable, as stale samples are."""
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (B, G), generator=g).float()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0
    A = group_advantages(rewards).reshape(-1)
    tokens = torch.randint(0, V, (B * G, T), generator=g)
    logits = torch.randn(B * G, T, V, generator=g)
    # The sampled tokens of right answers are likely (~0.8), those of wrong ones unlikely (~0.03).
    boost = torch.where(A[:, None] > 0, 5.0, -2.0).expand(-1, T)
    logits = logits.scatter_add(2, tokens[..., None], boost[..., None]).requires_grad_(True)
    logprobs = torch.log_softmax(logits, -1).gather(2, tokens[..., None]).squeeze(-1)
    mask = torch.ones(B * G, T)
    loss, _ = policy_loss(method, logprobs, mask, A)
    (g_all,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (g_neg,) = torch.autograd.grad(negative_part(method, logprobs, mask, A), logits)
    return update_shares([g_neg], [g_all])


def test_stale_negatives_dominate_the_naive_update_and_not_asympos():
    naive, asympo = _shares_on_stale_negatives("naive"), _shares_on_stale_negatives("asympo")
    assert naive["neg_share"] > 0.7, naive  # improbable wrong answers make most of the naive update
    assert asympo["neg_share"] < naive["neg_share"] - 0.2, (asympo, naive)
    assert naive["grad_norm_neg"] > 2 * naive["grad_norm_pos"]
