"""The method's parameter-space functions (method.py, paper eqs. 3 and 6) on numbers worked out by hand."""

import math

import pytest
import torch

import method


def leaf(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


# Two tensors per model; theta_g and two adapted models, by hand:
#   theta_g = (1, 2 | 0),  theta_n1 = (0, 2 | 1),  theta_n2 = (1, 0 | -1)
#   ||theta_g - n1||^2 = 1 + 0 + 1 = 2,  ||theta_g - n2||^2 = 0 + 4 + 1 = 5  ->  d_0 = 3.5
THETA_G = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
THETA_N = [[torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])],
           [torch.tensor([1.0, 0.0]), torch.tensor([[-1.0]])]]


def test_relative_distance_by_hand():
    adapted = method.AdaptedParameters(THETA_G, THETA_N)
    assert adapted.d0 == pytest.approx(3.5)
    params = [leaf([1.0, 2.0]), leaf([[0.0]])]
    assert adapted.relative_distance(params).item() == pytest.approx(1.0)

    # theta = (3, 2 | 0): ||theta - n1||^2 = 9 + 0 + 1 = 10, ||theta - n2||^2 = 4 + 4 + 1 = 9
    params = [leaf([3.0, 2.0]), leaf([[0.0]])]
    d = adapted.relative_distance(params)
    assert d.item() == pytest.approx(9.5 / 3.5)
    d.backward()
    # gradient 2 (theta - mean_j theta_n^j) / d_0, mean = (0.5, 1 | 0)
    assert params[0].grad.tolist() == pytest.approx([2 * 2.5 / 3.5, 2 * 1.0 / 3.5])
    assert params[1].grad.tolist() == [[0.0]]


def test_spread_is_mean_squared_deviation_from_the_mean_model():
    # mean = (0.5, 1 | 0); n1 - mean = (-0.5, 1 | 1) -> 2.25; n2 - mean = (0.5, -1 | -1) -> 2.25
    assert method.AdaptedParameters(THETA_G, THETA_N).spread == pytest.approx(2.25)


def test_relative_distance_matches_the_definition_and_accumulates():
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 2)]
    theta_g = [torch.randn(s, generator=gen) for s in shapes]
    theta_n = [[t + 0.3 * torch.randn(t.shape, generator=gen) for t in theta_g] for _ in range(3)]
    params = [(t + 0.1 * torch.randn(t.shape, generator=gen)).requires_grad_() for t in theta_g]

    ref_params = [p.detach().double().requires_grad_() for p in params]
    d0 = sum(sum(((g.double() - n.double()) ** 2).sum() for g, n in zip(theta_g, model))
             for model in theta_n) / 3
    ref = sum(sum(((p - n.double()) ** 2).sum() for p, n in zip(ref_params, model))
              for model in theta_n) / 3 / d0
    ref.backward()

    d = method.AdaptedParameters(theta_g, theta_n).relative_distance(params)
    assert d.item() == pytest.approx(ref.item(), rel=1e-5)
    d.backward()
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.grad, r.grad.float(), rtol=1e-5, atol=1e-7)
    # a second backward adds to .grad, as an adversarial loss's gradient would be added
    method.AdaptedParameters(theta_g, theta_n).relative_distance(params).backward()
    torch.testing.assert_close(params[0].grad, 2 * ref_params[0].grad.float(), rtol=1e-5, atol=1e-7)


def test_relative_distance_has_no_catastrophic_cancellation():
    # Large weights, tiny differences: the ||a||^2 - 2ab + ||b||^2 expansion returns noise here.
    theta_g = [torch.full((1000,), 1000.0)]
    theta_n = [[theta_g[0] + 1e-2]]
    params = [(theta_g[0] + 2e-2).requires_grad_()]  # float32 spacing at 1000 is 6e-5
    step_n = theta_n[0][0][0].item() - 1000.0            # what float32 actually stored
    step_p = params[0][0].item() - 1000.0
    expected = (step_p - step_n) ** 2 / step_n ** 2
    d = method.AdaptedParameters(theta_g, theta_n).relative_distance(params)
    assert d.item() == pytest.approx(expected, rel=1e-4)


def test_repulsion_values_by_hand():
    d = torch.tensor(2.0)
    assert method.repulsion_loss("il2", d, mu=3.0).item() == pytest.approx(1.5)
    assert method.repulsion_loss("nl2", d, mu=3.0).item() == pytest.approx(-6.0)
    assert method.repulsion_loss("el2", d, mu=3.0, alpha=0.5).item() == pytest.approx(3 * math.exp(-1))
    with pytest.raises(ValueError):
        method.repulsion_loss("l3", d, mu=1.0)


@pytest.mark.parametrize("kind, grad_at_2", [
    ("il2", -0.25),                  # d = theta^2 / d_0 = 4, dL/dtheta = -(1/d^2) * 2 theta / d_0
    ("nl2", -4.0),                   # -2 theta / d_0
    ("el2", -2 * math.exp(-2.0)),    # -alpha e^{-alpha d} * 2 theta / d_0, alpha = 0.5
])
def test_repulsion_gradient_pushes_away_from_theta_n(kind, grad_at_2):
    # one scalar parameter, theta_g = 1, theta_n = 0 -> d_0 = 1, d(theta) = theta^2
    adapted = method.AdaptedParameters([torch.tensor(1.0)], [[torch.tensor(0.0)]])
    for theta, sign in ((2.0, 1.0), (-2.0, -1.0)):
        param = leaf(theta)
        method.repulsion_loss(kind, adapted.relative_distance([param]), mu=1.0, alpha=0.5).backward()
        assert param.grad.item() == pytest.approx(sign * grad_at_2)
        # gradient descent moves theta further from theta_n = 0
        assert abs(theta - 0.1 * param.grad.item()) > abs(theta)


def test_ewc_penalty_zero_at_theta_g_and_by_hand():
    theta_g = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    fisher = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    params = [leaf([1.0, 2.0]), leaf([[0.5]])]
    penalty = method.ewc_penalty(params, theta_g, fisher, weight=10.0)
    penalty.backward()
    assert penalty.item() == 0.0
    assert all(p.grad.abs().max().item() == 0.0 for p in params)

    # theta - theta_g = (1, -1 | 2): 10 * (1*1 + 2*1 + 3*4) = 150; grad = 2 * 10 * F * diff
    params = [leaf([2.0, 1.0]), leaf([[2.5]])]
    penalty = method.ewc_penalty(params, theta_g, fisher, weight=10.0)
    penalty.backward()
    assert penalty.item() == pytest.approx(150.0)
    assert params[0].grad.tolist() == pytest.approx([20.0, -40.0])
    assert params[1].grad.tolist() == [[pytest.approx(120.0)]]


def test_fisher_diagonal_of_a_known_model():
    # loglik_s = (w . x_s)^2 + b, so d/dw = 2 (w . x_s) x_s and d/db = 1; `unused` is not reached.
    w, b, unused = leaf([1.0, 2.0]), leaf(0.3), leaf([5.0])
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loglik = (x @ w) ** 2 + b
    fisher = method.fisher_diagonal([w, b, unused], loglik)
    # sample 1: w.x = 1 -> (2, 0); sample 2: w.x = 3 -> (6, 6); mean of squares = (20, 18)
    assert fisher[0].tolist() == pytest.approx([20.0, 18.0])
    assert fisher[1].item() == pytest.approx(1.0)
    assert fisher[2].tolist() == [0.0]
    assert not fisher[0].requires_grad


def test_extrapolate_at_gamma_0_and_1():
    theta_g = {"w": torch.tensor([1.0, 2.0]), "step": torch.tensor(7)}
    theta_n = [{"w": torch.tensor([0.0, 2.0]), "step": torch.tensor(1)},
               {"w": torch.tensor([1.0, 0.0]), "step": torch.tensor(2)}]   # mean (0.5, 1)
    assert method.extrapolate(theta_g, theta_n, 0.0)["w"].tolist() == [1.0, 2.0]
    assert method.extrapolate(theta_g, theta_n, 1.0)["w"].tolist() == [1.5, 3.0]    # away from them
    assert method.extrapolate(theta_g, theta_n, -1.0)["w"].tolist() == [0.5, 1.0]   # their mean
    assert method.extrapolate(theta_g, theta_n, 1.0)["step"].item() == 7
    with pytest.raises(ValueError):
        method.extrapolate(theta_g, [{"step": torch.tensor(1)}], 1.0)


def test_select_parameters():
    state = {"a": torch.zeros(1), "b": torch.ones(2)}
    assert [t.tolist() for t in method.select_parameters(state, ["b", "a"])] == [[1.0, 1.0], [0.0]]
    with pytest.raises(ValueError, match="'c'"):
        method.select_parameters(state, ["a", "c"])


def test_l1_penalty_and_last_k_names_by_hand():
    params = [leaf([1.0, -2.0]), leaf([3.0])]
    penalty = method.l1_penalty(params, 0.5)
    assert penalty.item() == pytest.approx(0.5 * (1 + 2 + 3))
    penalty.backward()
    assert params[0].grad.tolist() == [0.5, -0.5] and params[1].grad.tolist() == [0.5]
    layers = [("first", ["a", "b"]), ("middle", []), ("last", ["c", "d", "e"])]
    assert method.last_k_layers(layers, 1) == ["c", "d", "e"]
    assert method.last_k_layers(layers, 3) == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="between 1 and 3"):
        method.last_k_layers(layers, 4)


def test_normalised_fisher_squared_distance_and_ema_pull_by_hand():
    fisher, mean = method.normalise_fisher([torch.tensor([1.0, 3.0]), torch.tensor([[8.0]])])
    assert mean == pytest.approx(4.0) and [f.tolist() for f in fisher] == [[0.25, 0.75], [[2.0]]]
    with pytest.raises(ValueError, match="zero everywhere"):
        method.normalise_fisher([torch.zeros(3)])
    theta_g, g = [torch.tensor([0.0, 0.0])], [torch.tensor([4.0, 2.0])]
    assert method.squared_distance(g, theta_g) == pytest.approx(20.0)
    # g_ema a quarter of the way back from g to θ_G along the line, plus a sideways part that
    # the projection ignores: s = 0.25
    sideways = torch.tensor([-1.0, 2.0])  # orthogonal to θ_G − g = (−4, −2)
    g_ema = [g[0] + 0.25 * (theta_g[0] - g[0]) + sideways]
    assert method.ema_pull(g_ema, g, theta_g) == pytest.approx(0.25)
    assert method.ema_pull(g, g, theta_g) == 0 and method.ema_pull(theta_g, g, theta_g) == pytest.approx(1.0)


def test_redaction_and_substitution_losses_by_hand():
    """DRed: w · mean softplus(D(x⁻)); at logits 0 and ln 3: (ln 2 + ln 4) / 2 = 1.5 ln 2.
    CUA: β · the per-pixel mean squared distance to the substitutes."""
    d_negatives = torch.tensor([[0.0], [math.log(3.0)]])
    assert float(method.redaction_loss(d_negatives, 2.0)) == pytest.approx(3 * math.log(2.0), rel=1e-6)
    images = torch.zeros(2, 3, 4, 4, requires_grad=True)
    substitutes = torch.ones(2, 3, 4, 4)
    substitutes[1] = -2.0  # squared distances 1 and 4 per pixel: mean 2.5
    loss = method.substitution_loss(images, substitutes, 0.5)
    assert float(loss.detach()) == pytest.approx(1.25)
    loss.backward()  # d/dx of 0.5 · mean (x − s)² = (x − s) / 96 per pixel
    assert torch.allclose(images.grad, -substitutes / 96)
