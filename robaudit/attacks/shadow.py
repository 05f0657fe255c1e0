"""Shadow Attack: a batched torch implementation and ART's reference (one image per ART call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from robaudit.attacks._art import ArtAttack, art_classifier
from robaudit.attacks.base import Attack, AttackKind, AttackParams, Criterion, Norm
from robaudit.errors import ConfigError


@dataclass(frozen=True)
class ShadowParams(AttackParams):
    """Parameters of :class:`Shadow` and :class:`ArtShadow`. Defaults differ from ART's on purpose
    (see :class:`ArtShadow`).

    ``sigma``, ``learning_rate`` and the three penalty weights are in units of the [0, 1] range and
    are scaled by the model's clip span ``span = hi - lo``: the attack works on the perturbation
    ``u = delta / span``, so the noise std is ``sigma * span``, a step moves ``u`` by
    ``learning_rate`` times the gradient with respect to ``u`` (``delta`` by ``span`` times that),
    and each penalty (all of degree 2 in ``delta``) is taken of ``u``, i.e. of ``delta`` divided by
    ``span**2``. A model rescaled to another range (inputs ``lo + span * x``) therefore meets the
    same objective and, with the same seed, yields the same examples up to that affine map. On
    [0, 1] nothing changes."""

    sigma: float = 0.05
    """Std of the Gaussian noise added to each copy of the image, as a fraction of the clip span
    (ART default 0.5)."""
    nb_steps: int = 300
    """Gradient-ascent steps on the perturbation (ART default 300)."""
    learning_rate: float = 0.1
    """Step size of each update, in units of the [0, 1] range (scaled by the clip span; ART
    default 0.1)."""
    lambda_tv: float = 0.3
    """Weight of the total variation (smoothness) penalty of ``delta / span`` (ART default 0.3)."""
    lambda_c: float = 1.0
    """Weight of the penalty on each channel's mean absolute change of ``delta / span`` (ART
    default 1.0)."""
    lambda_s: float = 0.5
    """Weight of the penalty on differences between colour channels of ``delta / span`` (ART
    default 0.5)."""
    nb_copies: int = 1
    """Noisy copies of the image averaged per step: ART's ``batch_size`` (ART default 400)."""
    untargeted_mode: str = "runner-up"
    """How to run untargeted: ``runner-up`` runs ART's targeted mode towards each image's second
    most likely clean class; ``ascent`` is ART's own untargeted loss ascent (unbounded, see below)."""
    check_every: int = 10
    """Torch backend: every this many steps the noise-free iterate is checked, and the latest
    adversarial one is returned when the final iterate is not adversarial (ART returns the final
    iterate only). Each check costs one forward pass per image."""


def _check(p: ShadowParams) -> None:
    if p.sigma <= 0:
        raise ConfigError(f"shadow: sigma must be > 0 (ART refuses 0), got {p.sigma}")
    if p.nb_steps < 1 or p.nb_copies < 1:
        raise ConfigError("shadow: nb_steps and nb_copies must be >= 1")
    if p.learning_rate <= 0:
        raise ConfigError(f"shadow: learning_rate must be > 0, got {p.learning_rate}")
    if min(p.lambda_tv, p.lambda_c, p.lambda_s) < 0:
        raise ConfigError("shadow: lambda_tv, lambda_c and lambda_s must be >= 0")
    if p.check_every < 1:
        raise ConfigError(f"shadow: check_every must be >= 1, got {p.check_every}")
    if p.untargeted_mode not in ("runner-up", "ascent"):
        raise ConfigError(f"shadow: untargeted_mode must be runner-up or ascent, got {p.untargeted_mode!r}")


class _ShadowContract:
    """What both backends of ``shadow`` promise the engine (kind, norms, parameters)."""

    name: ClassVar[str] = "shadow"
    kind: ClassVar[AttackKind] = AttackKind.MINIMIZATION
    norms: ClassVar[tuple[Norm, ...]] = (Norm.L2, Norm.LINF)
    needs_gradients: ClassVar[bool] = True
    Params: ClassVar[type[AttackParams]] = ShadowParams


def runner_up(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each input's most likely clean class other than its label."""
    with torch.no_grad():
        logits = model(x).float()
    return logits.scatter(1, labels.view(-1, 1), float("-inf")).argmax(dim=1)


def shadow_penalty(delta: torch.Tensor, p: ShadowParams) -> torch.Tensor:
    """Per-sample penalty of the perturbation ``delta`` (N, C, H, W): ``lambda_tv`` * squared total
    variation + ``lambda_c`` * squared L2 norm of the per-channel mean absolute change +
    ``lambda_s`` * Frobenius norm of the squared differences between colour channels (3 channels)."""
    dx = delta[..., :, 1:] - delta[..., :, :-1]
    dy = delta[..., 1:, :] - delta[..., :-1, :]
    tv = dx.pow(2).flatten(1).sum(1) + dy.pow(2).flatten(1).sum(1)
    chan = delta.abs().mean(dim=(2, 3)).pow(2).sum(1)
    out = p.lambda_tv * tv + p.lambda_c * chan
    if delta.shape[1] == 3:
        r, g, b = delta[:, 0], delta[:, 1], delta[:, 2]
        sim = ((r - g).pow(2) + (g - b).pow(2) + (r - b).pow(2)).flatten(1).norm(dim=1)
        out = out + p.lambda_s * sim
    return out


class Shadow(_ShadowContract, Attack):
    r"""Shadow Attack (Ghiasi, Shafahi and Goldstein, ICLR 2020) [https://arxiv.org/abs/2003.08937],
    batched over images: every image has its own perturbation, noise copies and target, and one
    forward/backward pass per step serves the whole batch (ART's ``ShadowAttack`` takes one image
    per call).

    Distance Measure : none enforced (reported: L2 / Linf of the result)

    The algorithm is ART's, step for step, so both backends answer the same question. It works on
    the perturbation in units of the clip span, ``u = delta / span`` with ``span = hi - lo`` (on
    [0, 1] exactly ART's): ``u`` starts uniform in ``[-1/2, 1/2]``; each of ``nb_steps`` steps adds
    ``learning_rate`` times the gradient with respect to ``u`` of the cross-entropy of the
    ``nb_copies`` noisy copies ``x + span * (N(0, sigma^2) + u)`` (fixed noise per copy, unclipped
    as in ART; ascended untargeted, descended towards the target when targeted, scaled by
    ``1 / nb_copies**2`` as ART's double average does) minus the gradient of
    :func:`shadow_penalty` of ``u``. So the settings mean the same on every range (see
    :class:`ShadowParams`; a [0, 255] copy of the demo CNN was fooled on 0 of 40 images against
    31 of 40 on [0, 1] before this scaling, 31 of 40 with the same examples now). The result is
    ``clip(x + span * u)``: the final iterate, or, when that is not adversarial, the latest
    adversarial iterate among those checked every ``check_every`` steps (never weaker than ART's).
    Untargeted runs towards the runner-up class by default (see :class:`ArtShadow` for why).

    Cost per image: ``nb_steps * nb_copies`` forward and backward passes plus
    ``nb_steps / check_every`` checking forward passes.

    Arguments: see :class:`ShadowParams` (shared with :class:`ArtShadow`).

    Shape:
        - x: (N, C, H, W) in ``clip``. - labels, targets: (N,). - output: (N, C, H, W).

    Examples::
        >>> out = Shadow().generate(model, x, labels)
        >>> out = Shadow(Shadow.Params(nb_steps=100)).generate(model, x, labels, targets)
    """


    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        assert isinstance(p, ShadowParams)
        _check(p)
        lo, hi = float(self.clip[0]), float(self.clip[1])
        span = hi - lo
        if criterion.targeted:
            goal, sign = criterion.attack_classes, -1.0
        elif p.untargeted_mode == "runner-up":
            goal, sign = runner_up(model, x, criterion.labels), -1.0
        else:
            goal, sign = criterion.labels, 1.0
        copies = p.nb_copies
        # In units of the [0, 1] range: the noise is sigma * span and ``u`` is the perturbation
        # divided by span, so the step and the (degree-2) penalties of ``u`` mean the same on every
        # clip range. On [0, 1] every multiplication by span = 1.0 is exact: the unscaled iterates.
        noise = torch.randn((copies, *x.shape), generator=generator, device=x.device, dtype=x.dtype) * (p.sigma * span)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5
        goal_rep = goal.repeat(copies)
        x_found = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for step in range(p.nb_steps):
            d = u.detach().requires_grad_(True)
            logits = model((x.unsqueeze(0) + noise + span * d.unsqueeze(0)).flatten(0, 1))
            ce = torch.nn.functional.cross_entropy(logits, goal_rep, reduction="sum") / copies**2
            objective = sign * ce - shadow_penalty(d, p).sum()
            (grad,) = torch.autograd.grad(objective, d)
            u = u + p.learning_rate * grad
            if (step + 1) % p.check_every == 0 and step + 1 < p.nb_steps:
                with torch.no_grad():
                    x_k = (x + span * u).clamp(lo, hi)
                    adv = criterion.is_adversarial(model(x_k))
                    found |= adv
                    x_found[adv] = x_k[adv]
        x_final = (x + span * u).clamp(lo, hi)
        with torch.no_grad():
            final_adv = criterion.is_adversarial(model(x_final))
        keep_earlier = (found & ~final_adv).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(keep_earlier, x_found, x_final)


class ArtShadow(_ShadowContract, ArtAttack):
    r"""Shadow Attack from "Breaking Certified Defenses: Semantic Adversarial Examples with Spoofed
    Robustness Certificates" (Ghiasi, Shafahi and Goldstein, ICLR 2020),
    [https://arxiv.org/abs/2003.08937], run through ART's ``ShadowAttack``.

    Distance Measure : none enforced (reported: L2 / Linf of the result)

    Gradient ascent on the cross-entropy (descent towards the target when targeted) of
    ``nb_copies`` Gaussian-noised copies of the image, minus penalties that keep the perturbation
    smooth (total variation), small per channel and, for colour images, alike across channels.
    There is no eps-ball: the perturbation is large but smooth, so this is a MINIMIZATION-kind
    attack whose distances are the measurement, not a budget.

    ART's ``ShadowAttack.generate`` accepts one image per call, so this adapter loops over the
    batch, one ART call per image (each with its own ART object, because ART switches an instance
    to targeted mode for good once it is given labels). Targeted calls pass the target.

    Untargeted. ART's own untargeted mode (``untargeted_mode="ascent"``: ascend the loss of the
    clean prediction, no labels passed) is unbounded: on the demo model it either let the
    penalties erase the perturbation (0-40 % fooled) or ran away to an L2 of 13-20 (the digit
    destroyed). The default ``runner-up`` instead runs ART's targeted mode towards each image's
    second most likely clean class; the loss there saturates once the target is reached, which
    keeps the perturbation moderate. Success is still judged untargeted (any wrong class).

    Defaults. At ART's defaults (sigma 0.5, 400 copies) the attack fooled 0 % of the MNIST demo
    model's images: it was designed against randomised-smoothing models, and ART's
    ``loss_gradient`` averages the loss over the copies and then ART averages the gradients again,
    so the class gradient shrinks as 1/copies**2 against the penalties. With one copy
    (``nb_copies=1``), a small noise (``sigma=0.05``) and ``runner-up``, the other ART defaults
    kept, it fooled 9 of 10 demo images untargeted at a median L2 of 2.5 (Linf about 0.4), and 5 of
    10 targeted at the next class. Learning rates above about 0.4 make ART's total-variation step
    unstable (checkerboard blow-up to Linf 1). ``nb_copies`` is ART's ``batch_size``; the cost is
    ``nb_steps * nb_copies`` forward and backward passes per image.

    Other ranges. ``sigma``, ``learning_rate`` and the penalty weights are passed to ART scaled by
    the clip span as :class:`ShadowParams` describes, so they mean the same on every range. ART
    draws its starting perturbation from ``U(lo, hi) - span / 2``, centred only when ``lo = 0``.

    Arguments:
        sigma (float): noise std of the copies. (Default: 0.05; ART 0.5)
        nb_steps (int): ascent steps. (Default: 300)
        learning_rate (float): step size. (Default: 0.1)
        lambda_tv (float): total-variation weight. (Default: 0.3)
        lambda_c (float): channel-mean weight. (Default: 1.0)
        lambda_s (float): channel-similarity weight. (Default: 0.5)
        nb_copies (int): noisy copies per step. (Default: 1; ART 400)
        untargeted_mode (str): ``runner-up`` or ``ascent``. (Default: ``runner-up``)

    Shape:
        - x: (N, C, H, W) in ``clip``. - labels, targets: (N,). - output: (N, C, H, W).

    Examples::
        >>> out = ArtShadow().generate(model, x, labels)
        >>> l2 = (out.x_adv - x).flatten(1).norm(dim=1)
    """


    def build(self, classifier: Any, targeted: bool, batch_size: int) -> Any:
        from art.attacks.evasion import ShadowAttack

        p = self.params
        assert isinstance(p, ShadowParams)
        _check(p)
        # ART works on the absolute perturbation: the [0, 1]-unit settings scaled by the span as
        # in :class:`ShadowParams` (noise x span, step x span**2 for the 1/span of the gradient,
        # degree-2 penalties / span**2). All factors are 1.0 on [0, 1].
        span = float(self.clip[1]) - float(self.clip[0])
        return ShadowAttack(classifier, sigma=float(p.sigma) * span, nb_steps=int(p.nb_steps),
                            learning_rate=float(p.learning_rate) * span**2, lambda_tv=float(p.lambda_tv) / span**2,
                            lambda_c=float(p.lambda_c) / span**2, lambda_s=float(p.lambda_s) / span**2,
                            batch_size=int(p.nb_copies), targeted=targeted, verbose=False)

    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
        clf = art_classifier(model, tuple(x.shape[1:]), num_classes, self.clip, x.device)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
        np.random.seed(seed)
        xs = x.detach().cpu().numpy().astype(np.float32)
        p = self.params
        assert isinstance(p, ShadowParams)
        _check(p)
        targets: np.ndarray | None = None
        if criterion.targets is not None:
            targets = criterion.targets.cpu().numpy().astype(np.int64)
        elif p.untargeted_mode == "runner-up":
            targets = runner_up(model, x, criterion.labels).cpu().numpy().astype(np.int64)
        out = np.empty_like(xs)
        for i in range(xs.shape[0]):
            attack = self.build(clf, targets is not None, 1)
            y = None if targets is None else targets[i : i + 1]
            out[i] = attack.generate(x=xs[i : i + 1], y=y)[0]
        return torch.from_numpy(out).to(x.device)
