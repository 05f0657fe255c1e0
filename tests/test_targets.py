"""Target computation and option parsing (property-based)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robaudit.attacks.base import Criterion, TargetMode
from robaudit.attacks.registry import AttackName, get_attack_class, parse_attack_names
from robaudit.attacks.targets import compute_targets, parse_targets
from robaudit.errors import ConfigError


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 16), k=st.integers(2, 20), seed=st.integers(0, 2**31 - 1))
def test_targets_are_valid_and_never_the_label(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    ll = compute_targets(TargetMode.LEAST_LIKELY, logits, labels)
    nxt = compute_targets(TargetMode.NEXT_CLASS, logits, labels)
    assert compute_targets(TargetMode.UNTARGETED, logits, labels) is None
    assert ((ll >= 0) & (ll < k)).all() and (ll != labels).all()
    assert (nxt == (labels + 1) % k).all() and (nxt != labels).all()
    # least-likely is the argmin of the clean logits among the other classes
    masked = logits.clone()
    masked[torch.arange(n), labels] = float("inf")
    assert torch.equal(logits.gather(1, ll[:, None]).squeeze(1), masked.min(dim=1).values)


def test_least_likely_on_a_correct_prediction_is_the_global_argmin():
    logits = torch.tensor([[5.0, 1.0, -3.0, 0.0], [0.0, 9.0, 2.0, -1.0]])
    labels = logits.argmax(dim=1)
    assert compute_targets(TargetMode.LEAST_LIKELY, logits, labels).tolist() == [2, 3]
    assert compute_targets(TargetMode.NEXT_CLASS, logits, labels).tolist() == [1, 2]


def test_criterion_success_semantics():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([0, 0, 1])
    assert Criterion(labels).is_adversarial(logits).tolist() == [True, False, True]
    targets = torch.tensor([1, 2, 2])
    assert Criterion(labels, targets).is_adversarial(logits).tolist() == [True, False, True]


def test_parse_targets_and_attacks():
    assert parse_targets("all") == list(TargetMode)
    assert parse_targets("next,ll") == [TargetMode.NEXT_CLASS, TargetMode.LEAST_LIKELY]
    with pytest.raises(ConfigError, match="unknown target 'sideways'"):
        parse_targets("sideways")
    assert parse_attack_names("all") == list(AttackName)
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'"):
        parse_attack_names("fgsm,pgdd")


@pytest.mark.parametrize("name", list(AttackName))
def test_every_registered_attack_resolves(name):
    """Exhaustive registry: each name maps to a class carrying that name and documented defaults."""
    for backend in ("torch", "art"):
        cls = get_attack_class(name, backend)
        assert cls.name == name.value
        assert cls.norms, "an attack must declare its norms"
        cls.Params()  # defaults construct
