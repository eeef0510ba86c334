"""Proofs of the numbered facts of docs/algorithm.md, for every loss method.

Batches are random with ragged masks; gradients from autograd are compared with the analytic column.
"""

import math

import pytest
import torch

from asympo.algo import METHODS, gpg_advantages, group_advantages, policy_loss

B, G, T = 4, 6, 9
N = B * G


def make_batch(seed=0, stale_negatives=False):
    """Random ragged batch: logprobs [N, T] (leaf), mask, zero-sum advantages, behavior logprobs."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.randint(0, 2, (B, G), generator=g).float()
    rewards[:, 0], rewards[:, 1] = 1.0, 0.0  # every group has signal
    A = group_advantages(rewards).reshape(N)
    nll = torch.nn.functional.softplus(torch.randn(N, T, generator=g)) + 0.05
    if stale_negatives:
        # Stale negatives sampled by an older policy sit at higher NLL under the current one.
        nll = nll + 2.0 * (A < 0).float()[:, None]
    # Padding holds garbage: it must never matter.
    logprobs = torch.where(mask.bool(), -nll, torch.full_like(nll, float("nan"))).requires_grad_(True)
    behavior = (-nll + 0.3 * torch.randn(N, T, generator=g)).detach()
    return logprobs, mask, A, behavior


def grad_of(method, logprobs, mask, A, **kw):
    loss, stats = policy_loss(method, logprobs, mask, A, **kw)
    (grad,) = torch.autograd.grad(loss, logprobs)
    return loss.detach(), grad, stats


def S_and_m(logprobs, mask):
    ell = torch.where(mask.bool(), logprobs.detach(), 0.0)
    m = mask.sum(1)
    return -ell.sum(1) / m, m


def method_kwargs(method, behavior):
    return {"behavior_logprobs": behavior} if method == "grpo" else {}


def method_advantages(method, A, rewards=None):
    return A


# --- Fact 1: ASymPO's forward value is exactly (1/N) Σ A_g, i.e. 0 for zero-sum advantages.


@pytest.mark.parametrize("stabilizer", [{}, {"clip_low": 0.05, "clip_high": 0.95}])
@pytest.mark.parametrize("seed", range(5))
def test_fact1_asympo_forward_is_zero(seed, stabilizer):
    logprobs, mask, A, _ = make_batch(seed, stale_negatives=True)
    loss, _ = policy_loss("asympo", logprobs, mask, A, **stabilizer)
    # Each term is A_g · S_g / S_g = A_g exactly, so the value is A's own mean to the last bit.
    assert torch.equal(loss.detach(), A.sum() / N)
    assert abs(loss.item()) < 1e-6


# --- Fact 2: ASymPO's gradient is (1/N) Σ (A/S) ∇S, the gradient of (1/N) Σ A log S.


@pytest.mark.parametrize("seed", range(5))
def test_fact2_asympo_gradient_matches_analytic_and_log_form(seed):
    logprobs, mask, A, _ = make_batch(seed)
    _, grad, _ = grad_of("asympo", logprobs, mask, A)
    S, m = S_and_m(logprobs, mask)
    analytic = (-A / (N * m * S))[:, None] * mask
    torch.testing.assert_close(grad, analytic, atol=1e-7, rtol=1e-5)

    ell = torch.where(mask.bool(), logprobs, 0.0)
    log_form = (A * torch.log(-ell.sum(1) / mask.sum(1))).sum() / N
    (grad_log,) = torch.autograd.grad(log_form, logprobs)
    torch.testing.assert_close(grad, grad_log, atol=1e-7, rtol=1e-5)


# --- The analytic gradient column, for every method.


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(3))
def test_gradient_matches_analytic_column(method, seed):
    logprobs, mask, A, behavior = make_batch(seed, stale_negatives=True)
    if method == "gpg":
        rewards = (A.reshape(B, G) > 0).float()
        A = gpg_advantages(rewards).reshape(N)
    _, grad, stats = grad_of(method, logprobs, mask, A, **method_kwargs(method, behavior))
    S, m = S_and_m(logprobs, mask)
    if method == "naive":
        coeff = -A / (N * m)
    elif method == "spo":
        coeff = -torch.where(A >= 0, A, 0.2 * A) / (N * m)
    elif method == "asympo":
        coeff = -A / (N * m * S)
    elif method == "gpg":
        coeff = -A / mask.sum() * torch.ones(N)
    if method == "grpo":
        ell = torch.where(mask.bool(), logprobs.detach(), 0.0)
        rho = torch.exp(ell - torch.where(mask.bool(), behavior, 0.0))
        # PPO-clip: the gradient flows only where the unclipped surrogate is the minimum.
        active = ((A[:, None] >= 0) & (rho <= 1.2)) | ((A[:, None] < 0) & (rho >= 0.8))
        analytic = -(A[:, None] * rho) / (N * m[:, None]) * active * mask
        assert 0.0 < stats["clip_frac"] < 1.0
    else:
        analytic = coeff[:, None] * mask
    torch.testing.assert_close(grad, analytic, atol=1e-7, rtol=1e-5)


# --- Fact 3: spo with α = 1 is naive; with α = 0 it trains on positives only.


def test_fact3_spo_alpha_one_is_naive_and_zero_is_positives_only():
    logprobs, mask, A, _ = make_batch(7, stale_negatives=True)
    naive_loss, naive_grad, _ = grad_of("naive", logprobs, mask, A)
    spo1_loss, spo1_grad, _ = grad_of("spo", logprobs, mask, A, alpha=1.0)
    assert torch.equal(spo1_loss, naive_loss) and torch.equal(spo1_grad, naive_grad)

    _, spo0_grad, _ = grad_of("spo", logprobs, mask, A, alpha=0.0)
    neg = A < 0
    assert torch.all(spo0_grad[neg] == 0)
    torch.testing.assert_close(spo0_grad[~neg], naive_grad[~neg])
    assert spo0_grad[~neg].abs().sum() > 0


# --- Fact 4: naive's value is Δ; R drifts above 1 for stale negatives; ASymPO's own ratio is 1.


@pytest.mark.parametrize("method", METHODS)
def test_fact4_balance_gauges_are_logged_for_every_method(method):
    logprobs, mask, A, behavior = make_batch(3, stale_negatives=True)
    _, stats = policy_loss(method, logprobs, mask, A, **method_kwargs(method, behavior))
    for key in ("delta", "R", "S_pos", "S_neg", "loss", "n_pos", "n_neg", "tokens"):
        assert key in stats and isinstance(stats[key], float), key
    S, _ = S_and_m(logprobs, mask)
    assert stats["delta"] == pytest.approx(float((A * S).sum() / N), rel=1e-5)
    pos_mass = float((A[A > 0] * S[A > 0]).sum())
    neg_mass = float((-A[A < 0] * S[A < 0]).sum())
    assert stats["R"] == pytest.approx(neg_mass / pos_mass, rel=1e-5)
    assert stats["S_neg"] > stats["S_pos"]


def test_fact4_naive_value_is_the_imbalance_and_not_zero_when_stale():
    logprobs, mask, A, _ = make_batch(4, stale_negatives=True)
    loss, stats = policy_loss("naive", logprobs, mask, A)
    assert loss.item() == pytest.approx(stats["delta"], rel=1e-6)
    # Zero-sum advantages do not make Δ zero: stale negatives dominate (Δ < 0, R > 1).
    assert stats["delta"] < -0.1
    assert stats["R"] > 1.2
    _, a_stats = policy_loss("asympo", logprobs, mask, A)
    assert a_stats["R"] == pytest.approx(stats["R"])
    assert "R_norm" not in a_stats  # 1 by construction on zero-sum groups: not a gauge


# --- Fact 5: padding changes nothing; a response's length cancels out of its gradient mass.


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pad_value", [float("nan"), float("-inf"), 3.0])
def test_fact5_padding_changes_neither_values_nor_gradients(method, pad_value):
    logprobs, mask, A, behavior = make_batch(5)
    kw = method_kwargs(method, behavior)
    loss, grad, stats = grad_of(method, logprobs, mask, A, **kw)

    extra = 5
    padded = torch.cat([logprobs.detach(), torch.full((N, extra), pad_value)], 1).requires_grad_(True)
    padded_mask = torch.cat([mask, torch.zeros(N, extra)], 1)
    if method == "grpo":
        kw = {"behavior_logprobs": torch.cat([behavior, torch.full((N, extra), pad_value)], 1)}
    p_loss, p_grad, p_stats = grad_of(method, padded, padded_mask, A, **kw)
    # Equal up to float summation order (GPG sums over the whole padded matrix).
    torch.testing.assert_close(p_loss, loss, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(p_grad[:, :T], grad, atol=0, rtol=0)
    assert torch.all(p_grad[:, T:] == 0)
    assert torch.all(p_grad[padded_mask == 0] == 0)
    assert stats == pytest.approx(p_stats, nan_ok=True)


@pytest.mark.parametrize("method", ["naive", "spo", "asympo", "grpo"])
def test_fact5_length_cancels_out_of_gradient_mass(method):
    # Two responses with the same per-token NLL (so the same S) but lengths 2 and 8.
    logprobs = torch.full((4, 8), -0.7)
    mask = torch.zeros(4, 8)
    mask[0, :2] = mask[1, :8] = mask[2, :3] = mask[3, :8] = 1
    A = torch.tensor([1.0, 1.0, -1.0, -1.0])
    logprobs.requires_grad_(True)
    kw = {"behavior_logprobs": logprobs.detach().clone()} if method == "grpo" else {}
    _, grad, _ = grad_of(method, logprobs, mask, A, **kw)
    mass = grad.abs().sum(1)
    torch.testing.assert_close(mass[0], mass[1])
    torch.testing.assert_close(mass[2], mass[3])
    scale = {"naive": 1.0, "spo": 1.0, "asympo": 1 / 0.7, "grpo": 1.0}[method]
    torch.testing.assert_close(mass[0], torch.tensor(scale / 4))


def test_gpg_gradient_mass_grows_with_length_by_definition():
    logprobs = torch.full((2, 8), -0.7, requires_grad=True)
    mask = torch.zeros(2, 8)
    mask[0, :2] = mask[1, :8] = 1
    _, grad, _ = grad_of("gpg", logprobs, mask, torch.tensor([1.0, 1.0]))
    mass = grad.abs().sum(1)
    # Global token mean: mass ∝ m_g |A_g|, the length bias GPG accepts.
    torch.testing.assert_close(mass, torch.tensor([2 / 10, 8 / 10]))


# --- Fact 6: grpo at ratio 1 has naive's (token-mean) gradient.


def test_fact6_grpo_at_ratio_one_equals_naive_gradient():
    logprobs, mask, A, _ = make_batch(6, stale_negatives=True)
    behavior = logprobs.detach().clone()
    _, grpo_grad, stats = grad_of("grpo", logprobs, mask, A, behavior_logprobs=behavior)
    _, naive_grad, _ = grad_of("naive", logprobs, mask, A)
    torch.testing.assert_close(grpo_grad, naive_grad, atol=1e-8, rtol=1e-6)
    assert stats["clip_frac"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)


# --- The ASymPO stabilizer (appendix C).


def test_stabilizer_clips_by_sign_keeps_values_and_stops_gradients():
    ell = torch.log(torch.tensor([[0.999, 0.5, 0.2], [0.001, 0.5, 0.2]])).requires_grad_(True)
    mask = torch.ones(2, 3)
    A = torch.tensor([1.0, -1.0])
    loss, stats = policy_loss("asympo", ell, mask, A, clip_low=0.01, clip_high=0.99)
    (grad,) = torch.autograd.grad(loss, ell)
    # Token 0 of the positive (p > 0.99) and of the negative (p < 0.01) are clipped: no gradient.
    assert grad[0, 0] == 0 and grad[1, 0] == 0
    assert torch.all(grad[:, 1:] != 0)
    # Clipped tokens keep their clipped value in S: the gradient uses S computed with log 0.99 / log 0.01.
    S_pos = -(math.log(0.99) + math.log(0.5) + math.log(0.2)) / 3
    assert grad[0, 1].item() == pytest.approx(-1.0 / (2 * 3 * S_pos), rel=1e-5)
    S_neg = -(math.log(0.01) + math.log(0.5) + math.log(0.2)) / 3
    assert grad[1, 1].item() == pytest.approx(1.0 / (2 * 3 * S_neg), rel=1e-5)
    assert stats["clip_high_frac"] == pytest.approx(1 / 3)
    assert stats["clip_low_frac"] == pytest.approx(1 / 3)
    assert loss.item() == 0.0


def test_stabilizer_is_off_by_default():
    logprobs, mask, A, _ = make_batch(8)
    _, stats = policy_loss("asympo", logprobs, mask, A)
    assert "clip_high_frac" not in stats


# --- Options and inputs.


@pytest.mark.parametrize(
    ("method", "kwargs", "error", "match"),
    [
        ("ppo", {}, ValueError, "unknown loss method"),
        ("naive", {"alpha": 0.5}, TypeError, "takes no option 'alpha'"),
        ("spo", {"alpha": 1.5}, ValueError, "alpha"),
        ("asympo", {"clip_high": 1.5}, ValueError, "clip_high"),
        ("grpo", {}, ValueError, "needs behavior_logprobs"),
        ("naive", {"behavior_logprobs": torch.zeros(N, T)}, ValueError, "current-policy"),
        ("grpo", {"behavior_logprobs": torch.zeros(N, T), "clip_eps": 0.0}, ValueError, "clip_eps"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(method, kwargs, error, match):
    logprobs, mask, A, _ = make_batch(0)
    with pytest.raises(error, match=match):
        policy_loss(method, logprobs, mask, A, **kwargs)


def test_shape_errors_name_the_argument():
    logprobs, mask, A, _ = make_batch(0)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss("naive", logprobs, mask, A[:-1])
    with pytest.raises(ValueError, match="mask"):
        policy_loss("naive", logprobs, mask[:, :-1], A)


@pytest.mark.parametrize("method", METHODS)
def test_global_batch_normalizer_splits_exactly_across_ranks(method):
    """Two halves with num_responses=N (and GPG's num_tokens) sum to the full-batch gradient."""
    logprobs, mask, A, behavior = make_batch(9)
    kw = method_kwargs(method, behavior)
    _, full_grad, _ = grad_of(method, logprobs, mask, A, **kw)
    half = N // 2
    extra = {"num_responses": N}
    if method == "gpg":
        extra["num_tokens"] = float(mask.sum())
    parts = []
    for sl in (slice(0, half), slice(half, N)):
        part_kw = {"behavior_logprobs": behavior[sl]} if method == "grpo" else {}
        lp = logprobs.detach()[sl].clone().requires_grad_(True)
        _, g, _ = grad_of(method, lp, mask[sl], A[sl], **part_kw, **extra)
        parts.append(g)
    torch.testing.assert_close(torch.cat(parts), full_grad, atol=1e-8, rtol=1e-6)
