"""Eps-ball projection and clip range invariants of the shared attack base (property-based)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robaudit.attacks.base import Attack, AttackKind, Norm, project_ball
from robaudit.metrics import perturbation_norms


class _Wild(Attack):
    """An attack that returns garbage far outside every bound: the base must still project it."""

    name = "wild"
    kind = AttackKind.FIXED_EPS
    norms = (Norm.LINF, Norm.L2)
    default_eps = {Norm.LINF: 0.1, Norm.L2: 1.0}

    def run(self, model, x, criterion, generator):
        return x + 10 * torch.randn(x.shape, generator=generator, device=x.device)


@settings(max_examples=60, deadline=None)
@given(eps=st.floats(0.0, 3.0), norm=st.sampled_from([Norm.LINF, Norm.L2]), seed=st.integers(0, 1000),
       lo=st.sampled_from([0.0, -1.0]), batch=st.integers(1, 7))
def test_generate_respects_eps_ball_and_clip(eps, norm, seed, lo, batch):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(9, 1, 5, 5, generator=g) * (1.0 - lo) + lo
    labels = torch.zeros(9, dtype=torch.long)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(25, 3))
    out = _Wild(norm=norm, eps=eps).generate(model, x, labels, clip=(lo, 1.0), batch_size=batch, seed=seed)
    d = perturbation_norms(x, out.x_adv)
    measured = d.linf if norm is Norm.LINF else d.l2
    assert float(measured.max()) <= eps * (1 + 1e-6) + 1e-6
    assert float(out.x_adv.min()) >= lo and float(out.x_adv.max()) <= 1.0
    again = _Wild(norm=norm, eps=eps).generate(model, x, labels, clip=(lo, 1.0), batch_size=batch, seed=seed)
    assert torch.equal(out.x_adv, again.x_adv)


@settings(max_examples=60, deadline=None)
@given(eps=st.floats(1e-3, 5.0), seed=st.integers(0, 1000))
def test_project_ball_l2_is_idempotent_and_minimal_inside(eps, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 4, 4, generator=g)
    small = x + 1e-4 * torch.randn(x.shape, generator=g)
    assert torch.allclose(project_ball(x, small, eps, Norm.L2), small)
    far = x + 100 * torch.randn(x.shape, generator=g)
    p = project_ball(x, far, eps, Norm.L2)
    assert torch.allclose((p - x).flatten(1).norm(dim=1), torch.full((4,), eps, dtype=torch.float32), rtol=1e-5, atol=2e-6)
    assert torch.allclose(project_ball(x, p, eps, Norm.L2), p, atol=1e-6)


def test_pass_counter_counts_forward_and_backward():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))

    class _TwoSteps(Attack):
        name = "two"
        kind = AttackKind.MINIMIZATION
        norms = (Norm.L2,)

        def run(self, model, x, criterion, generator):
            for _ in range(2):
                xi = x.clone().requires_grad_(True)
                loss = model(xi).sum()
                torch.autograd.grad(loss, xi)
            with torch.no_grad():
                model(x[:1])
            return x

    out = _TwoSteps().generate(model, torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long), batch_size=4)
    # batches of 4 and 2: 2 grad steps each (6 images x 2) plus one no-grad probe per batch (2)
    assert out.forward_passes == 14
    assert out.backward_passes == 12
