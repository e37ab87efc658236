"""The leave-one-out set advantages (docs/objective.md): known values, the identities,
and unbiasedness of the gradient estimator on a toy categorical policy with a closed-form J."""

import itertools
import math

import numpy as np
import pytest
import torch

from polychromic.training.objectives.polychromic import pointwise_advantages, set_advantages, set_values


def _sym(n, rng):
    d = rng.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def test_known_small_case_by_hand():
    q = np.array([1.0, 1.0, 0.5])
    d = np.array([[0, 0.5, 1.0], [0.5, 0, 0.8], [1.0, 0.8, 0]])
    # F{0,1} = 1 * 0.5 = 0.5, F{0,2} = 0.75 * 1 = 0.75, F{1,2} = 0.75 * 0.8 = 0.6
    # g = [0.625, 0.55, 0.675], b = [0.6, 0.75, 0.5], A = (2/3)(g - b)
    a = set_advantages(q, d, 2)
    np.testing.assert_allclose(a, [2 / 3 * 0.025, 2 / 3 * -0.2, 2 / 3 * 0.175], rtol=0, atol=1e-12)
    # pure diversity and pass@k-style rewards go through the same code path
    np.testing.assert_allclose(set_advantages(q, d, 2, set_reward="diversity"), [2 / 3 * (0.75 - 0.8), 2 / 3 * (0.65 - 1.0), 2 / 3 * (0.9 - 0.5)], atol=1e-12)
    np.testing.assert_allclose(set_advantages(q, d, 2, set_reward="max_quality"), [2 / 3 * (1 - 1), 2 / 3 * (1 - 1), 2 / 3 * (1 - 1)], atol=1e-12)
    np.testing.assert_allclose(set_advantages(q, d, 1, set_reward="max_quality"), [1 / 3 * (1 - 0.75), 1 / 3 * (1 - 0.75), 1 / 3 * (0.5 - 1)], atol=1e-12)


@pytest.mark.parametrize("big_n,n", [(4, 2), (5, 2), (5, 3), (6, 4), (7, 3)])
def test_identity_g_minus_mean_equals_scaled_g_minus_b(big_n, n):
    rng = np.random.default_rng(big_n * 10 + n)
    q, d = rng.random(big_n), _sym(big_n, rng)
    subsets = np.array(list(itertools.combinations(range(big_n), n)))
    f = set_values(q, d, subsets)
    g = np.array([f[(subsets == i).any(axis=1)].mean() for i in range(big_n)])
    b = np.array([f[~(subsets == i).any(axis=1)].mean() for i in range(big_n)])
    np.testing.assert_allclose(g - f.mean(), (1 - n / big_n) * (g - b), atol=1e-12)
    np.testing.assert_allclose(set_advantages(q, d, n), n / big_n * (g - b), atol=1e-12)


def test_n_equal_N_gives_zero_advantages():
    rng = np.random.default_rng(0)
    for big_n in (2, 3, 5):
        a = set_advantages(rng.random(big_n), _sym(big_n, rng), big_n)
        assert a.shape == (big_n,) and np.all(a == 0.0)


def test_permutation_equivariance():
    rng = np.random.default_rng(1)
    q, d = rng.random(6), _sym(6, rng)
    perm = rng.permutation(6)
    a = set_advantages(q, d, 3)
    ap = set_advantages(q[perm], d[np.ix_(perm, perm)], 3)
    np.testing.assert_allclose(ap, a[perm], atol=1e-12)
    assert np.abs(a).max() > 1e-3  # a non-trivial case


def test_sampled_subsets_are_unbiased_for_the_enumerated_advantages():
    rng = np.random.default_rng(2)
    q, d = rng.random(7), _sym(7, rng)
    exact = set_advantages(q, d, 3)  # C(7, 3) = 35 <= 256: enumerated
    draws = np.stack([set_advantages(q, d, 3, max_subsets=8, rng=np.random.default_rng(s)) for s in range(1500)])
    se = draws.std(axis=0, ddof=1) / math.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - exact) < 4 * se + 1e-12)
    assert not np.allclose(draws[0], exact)  # the sampled branch really ran


def test_bad_inputs_raise_with_useful_text():
    with pytest.raises(ValueError, match="distance: expected shape"):
        set_advantages(np.ones(3), np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match="set_size"):
        set_advantages(np.ones(3), np.zeros((3, 3)), 4)
    with pytest.raises(ValueError, match="set_size"):
        set_advantages(np.ones(3), np.zeros((3, 3)), 1)  # d(S) needs a pair
    with pytest.raises(ValueError, match="finite"):
        set_advantages(np.array([1.0, np.nan, 0.0]), np.zeros((3, 3)), 2)


def test_pointwise_variant():
    q = np.array([1.0, 0.5, 0.0])
    d = np.array([[0, 0.2, 0.6], [0.2, 0, 1.0], [0.6, 1.0, 0]])
    # r = q * mean distance to the others = [0.4, 0.3, 0.0], minus the group mean 0.7 / 3
    np.testing.assert_allclose(pointwise_advantages(q, d), np.array([0.4, 0.3, 0.0]) - 0.7 / 3, atol=1e-12)
    assert abs(pointwise_advantages(q, d).sum()) < 1e-12


# ---------------------------------------------------------------------------------------------
# Toy categorical policy: pi = softmax(theta) over K outcomes, quality and distance tables.
# J(theta) = E[F(y_1..y_n)], y_k iid ~ pi, in closed form over all K^n outcome tuples.

K = 4
Q_TABLE = np.array([0.9, 0.2, 0.6, 1.0])
D_TABLE = np.array([[0.0, 0.7, 0.3, 0.9], [0.7, 0.0, 0.5, 0.4], [0.3, 0.5, 0.0, 0.8], [0.9, 0.4, 0.8, 0.0]])
THETA = np.array([0.3, -0.2, 0.5, -0.6])


def _exact_grad(n: int) -> np.ndarray:
    theta = torch.tensor(THETA, requires_grad=True, dtype=torch.float64)
    pi = torch.softmax(theta, 0)
    j = torch.zeros((), dtype=torch.float64)
    for ys in itertools.product(range(K), repeat=n):
        ys = np.array(ys)
        f = set_values(Q_TABLE[ys], D_TABLE[np.ix_(ys, ys)], np.arange(n)[None, :])[0]
        j = j + torch.prod(pi[list(ys)]) * f
    j.backward()
    return theta.grad.numpy()


def _estimates(big_n: int, n: int, draws: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(123)
    pi = np.exp(THETA) / np.exp(THETA).sum()
    out = np.empty((draws, K))
    for r in range(draws):
        y = rng.choice(K, size=big_n, p=pi)
        a = scale * set_advantages(Q_TABLE[y], D_TABLE[np.ix_(y, y)], n)
        # grad_theta log pi(y) = onehot(y) - pi
        out[r] = a @ (np.eye(K)[y] - pi)
    return out


@pytest.mark.parametrize("big_n,n", [(5, 2), (5, 3)])
def test_estimator_mean_matches_exact_gradient_of_expected_set_reward(big_n, n):
    exact = _exact_grad(n)
    est = _estimates(big_n, n, draws=6000)
    mean, se = est.mean(axis=0), est.std(axis=0, ddof=1) / math.sqrt(len(est))
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    # the check has power: the gradient is clearly non-zero, and dropping the n/N factor is caught
    assert np.abs(exact).max() > 10 * se.max()
    wrong = est * (big_n / n)
    assert np.any(np.abs(wrong.mean(axis=0) - exact) > 4 * se * (big_n / n))


def test_exact_gradient_matches_finite_differences():
    # the closed form itself, checked against central differences of J
    def j(theta):
        pi = np.exp(theta) / np.exp(theta).sum()
        total = 0.0
        for ys in itertools.product(range(K), repeat=2):
            ys = np.array(ys)
            f = set_values(Q_TABLE[ys], D_TABLE[np.ix_(ys, ys)], np.arange(2)[None, :])[0]
            total += np.prod(pi[ys]) * f
        return total

    h = 1e-6
    fd = np.array([(j(THETA + h * np.eye(K)[k]) - j(THETA - h * np.eye(K)[k])) / (2 * h) for k in range(K)])
    np.testing.assert_allclose(_exact_grad(2), fd, atol=1e-8)


@pytest.mark.parametrize("kind", ["vendi", "classes"])
def test_estimator_is_unbiased_for_the_duplicate_counting_diversities(kind):
    # The leave-one-out estimator holds for any symmetric F: the same check with d(S) = Vendi / n
    # and classes / n (threshold 0.35: outcome pairs 0-2 at 0.3 are one class).
    def f_of(ys):
        return set_values(Q_TABLE[ys], D_TABLE[np.ix_(ys, ys)], np.arange(len(ys))[None, :], set_diversity=kind, class_threshold=0.35)[0]

    theta = torch.tensor(THETA, requires_grad=True, dtype=torch.float64)
    pi_t = torch.softmax(theta, 0)
    j = sum(torch.prod(pi_t[list(ys)]) * f_of(np.array(ys)) for ys in itertools.product(range(K), repeat=3))
    j.backward()
    exact = theta.grad.numpy()
    rng = np.random.default_rng(7)
    pi = np.exp(THETA) / np.exp(THETA).sum()
    est = np.empty((5000, K))
    for r in range(len(est)):
        y = rng.choice(K, size=5, p=pi)
        a = set_advantages(Q_TABLE[y], D_TABLE[np.ix_(y, y)], 3, set_diversity=kind, class_threshold=0.35)
        est[r] = a @ (np.eye(K)[y] - pi)
    mean, se = est.mean(axis=0), est.std(axis=0, ddof=1) / math.sqrt(len(est))
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    assert np.abs(exact).max() > 8 * se.max()


# ---------------------------------------------------------------------------------------------
# KL estimators on a toy categorical policy: which KL does each one's expected gradient follow?

REF = np.array([0.1, 0.4, 0.3, 0.2])


def _kl(theta: np.ndarray, direction: str) -> float:
    pi = np.exp(theta) / np.exp(theta).sum()
    if direction == "pi||ref":
        return float(np.sum(pi * np.log(pi / REF)))
    return float(np.sum(REF * np.log(REF / pi)))


def _fd_grad(direction: str) -> np.ndarray:
    h = 1e-6
    return np.array([(_kl(THETA + h * np.eye(K)[k], direction) - _kl(THETA - h * np.eye(K)[k], direction)) / (2 * h) for k in range(K)])


@pytest.mark.parametrize("estimator, direction", [("k3", "ref||pi"), ("k2", "pi||ref")])
def test_kl_estimator_expected_gradient_is_its_kl(estimator, direction):
    from polychromic.training.objectives.polychromic import KL_ESTIMATORS

    # E_{y ~ pi}[grad_theta k(log pi(y), log ref(y))], the sample y held fixed as in training
    # (the samples come from generate, no gradient through them): exact, by enumerating y.
    theta = torch.tensor(THETA, requires_grad=True, dtype=torch.float64)
    logp = torch.log_softmax(theta, 0)
    ref = torch.log(torch.tensor(REF, dtype=torch.float64))
    per_y = KL_ESTIMATORS[estimator](logp, ref, torch.ones(K, dtype=torch.float64))
    (torch.softmax(theta, 0).detach() * per_y).sum().backward()
    grad = theta.grad.numpy()
    np.testing.assert_allclose(grad, _fd_grad(direction), atol=1e-7)
    other = "pi||ref" if direction == "ref||pi" else "ref||pi"
    assert np.abs(grad - _fd_grad(other)).max() > 1e-2  # the two KLs' gradients differ here: the check has power
    # Monte-Carlo over samples from pi gives the same within a few standard errors
    rng = np.random.default_rng(0)
    pi = torch.softmax(theta, 0).detach().numpy()
    ys = rng.choice(K, size=4000, p=pi)
    g = []
    for y in ys[:4000]:
        t = torch.tensor(THETA, requires_grad=True, dtype=torch.float64)
        lp = torch.log_softmax(t, 0)[y]
        KL_ESTIMATORS[estimator](lp, ref[y], torch.ones((), dtype=torch.float64)).backward()
        g.append(t.grad.numpy())
    g = np.array(g)
    assert np.all(np.abs(g.mean(axis=0) - grad) < 4 * g.std(axis=0, ddof=1) / math.sqrt(len(g)) + 1e-12)


def test_k3_value_estimates_kl_pi_ref_and_is_nonnegative():
    from polychromic.training.objectives.polychromic import k2, k3

    pi = np.exp(THETA) / np.exp(THETA).sum()
    logp = torch.log(torch.tensor(pi))
    ref = torch.log(torch.tensor(REF))
    vals = k3(logp, ref, torch.ones(K, dtype=torch.float64))
    assert torch.all(vals >= 0)
    assert float((torch.tensor(pi) * vals).sum()) == pytest.approx(_kl(THETA, "pi||ref"), abs=1e-12)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.all(k3(logp, ref, mask)[mask == 0] == 0) and torch.all(k2(logp, ref, mask)[mask == 0] == 0)
