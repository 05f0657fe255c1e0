"""Shared base of every attack: bounds, criteria, batching, seeding, device and pass accounting.

Subclasses implement only :meth:`Attack.run` for one batch already on the model's device. The
final :meth:`Attack.generate` does the shared work once: batching, per-batch seeding, moving data
to the device, projecting the result onto the eps-ball (fixed-eps attacks) and the clip range,
and counting forward/backward passes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch

from robaudit.errors import AttackFailure, ConfigError


class Norm(str, Enum):
    """Distance in which an attack's budget is measured."""

    LINF = "linf"
    L2 = "l2"
    L0 = "l0"

    @classmethod
    def parse(cls, value: str) -> "Norm":
        v = value.strip().lower().replace("-", "")
        aliases = {"inf": cls.LINF, "linf": cls.LINF, "l2": cls.L2, "2": cls.L2, "l0": cls.L0, "0": cls.L0}
        if v not in aliases:
            raise ConfigError(f"unknown norm {value!r}: use linf or l2")
        return aliases[v]


class TargetMode(str, Enum):
    """The three target settings of the study."""

    UNTARGETED = "untargeted"
    LEAST_LIKELY = "least-likely"
    NEXT_CLASS = "next-class"

    @property
    def targeted(self) -> bool:
        return self is not TargetMode.UNTARGETED


class AttackKind(str, Enum):
    FIXED_EPS = "fixed-eps"
    """Maximises a loss inside an eps-ball; the result is projected onto the ball."""
    MINIMIZATION = "minimization"
    """Looks for the smallest perturbation; its distance is the measurement."""


@dataclass(frozen=True)
class Criterion:
    """What counts as adversarial for a batch: misclassification, or hitting ``targets``."""

    labels: torch.Tensor
    targets: torch.Tensor | None = None

    @property
    def targeted(self) -> bool:
        return self.targets is not None

    def is_adversarial(self, logits: torch.Tensor) -> torch.Tensor:
        """Rows whose prediction is the target (or not the label). A row with a NaN or infinite logit
        is never adversarial: its argmax is arbitrary (NaN's position), not a decision of the model."""
        pred = logits.argmax(dim=1)
        hit = pred == self.targets if self.targets is not None else pred != self.labels
        return hit & torch.isfinite(logits).all(dim=1)

    def subset(self, idx: torch.Tensor) -> "Criterion":
        return Criterion(self.labels[idx], None if self.targets is None else self.targets[idx])

    @property
    def attack_classes(self) -> torch.Tensor:
        """The class a loss should push towards (targeted) or away from (untargeted)."""
        return self.targets if self.targets is not None else self.labels


class PassCounter:
    """Counts per-image forward and backward passes through a model, and the NaN/inf among them.

    ``nonfinite_logits`` counts forward rows (images) whose logits hold a NaN or an inf;
    ``nonfinite_grads`` backward rows whose gradient with respect to the model's input does. The
    counts accumulate on the model's device (no synchronisation per pass) until read.
    """

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self._bad_logits: torch.Tensor | int = 0
        self._bad_grads: torch.Tensor | int = 0

    def check_logits(self, out: torch.Tensor) -> None:
        self._bad_logits = self._bad_logits + nonfinite_rows(out.detach())

    def check_grad(self, grad: torch.Tensor) -> None:
        self._bad_grads = self._bad_grads + nonfinite_rows(grad.detach())

    @property
    def nonfinite_logits(self) -> int:
        return int(self._bad_logits)

    @property
    def nonfinite_grads(self) -> int:
        return int(self._bad_grads)


def nonfinite_rows(t: torch.Tensor) -> torch.Tensor:
    """How many samples (first dimension) of ``t`` hold a NaN or an inf, as a 0-d tensor on its device."""
    if t.ndim == 0 or t.shape[0] == 0:
        return torch.zeros((), dtype=torch.int64, device=t.device)
    return (~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).sum()


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, counter: PassCounter) -> torch.Tensor:  # type: ignore[override]
        ctx.counter = counter
        ctx.rows = out.shape[0]
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.counter.backward += ctx.rows
        return grad, None


class CountingModel(torch.nn.Module):
    """Wraps a classifier; every image through ``forward`` (and back through autograd) is counted."""

    def __init__(self, model: torch.nn.Module, counter: PassCounter) -> None:
        super().__init__()
        self.model = model
        self.counter = counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.forward += x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad:
            # A fresh view per call, so the hook fires once per backward through this forward
            # (a hook on ``x`` itself would pile up when an attack reuses its input tensor).
            x = x.view_as(x)
            x.register_hook(self.counter.check_grad)
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            self.counter.check_logits(out)
        if torch.is_grad_enabled() and out.requires_grad:
            out = _CountBackward.apply(out, self.counter)
        return out


@dataclass
class AttackOutput:
    """Adversarial examples for all inputs (CPU) plus cost accounting."""

    x_adv: torch.Tensor
    seconds: float
    forward_passes: int
    backward_passes: int
    nonfinite_logits: int = 0
    """Forward passes (images) whose logits held NaN or inf."""
    nonfinite_grads: int = 0
    """Backward passes (images) whose gradient with respect to the input held NaN or inf."""
    nonfinite_examples: int = 0
    """Adversarial examples the attack returned with NaN or inf; replaced by the clean input."""
    search_exhausted: int = 0
    """Inputs left without an adversarial example while the attack's own search was still escalating
    when its rounds ran out (C&W-L2: ``c`` still growing x10): a budget too small, not robustness."""
    no_start: int = 0
    """Inputs a decision-based attack found no adversarial starting point for (HopSkipJump: no input
    of the target class in the batch and no noise draw that hits it); returned unchanged."""


@dataclass(frozen=True)
class AttackParams:
    """Base of every attack's parameter dataclass. Fields are documented defaults."""


def params_from_overrides(cls: type[AttackParams], overrides: dict[str, str | float | int | bool],
                          attack: str | None = None) -> AttackParams:
    """Build ``cls`` from user ``key=value`` overrides, converting strings to field types (``attack``
    names the attack in error messages)."""
    import difflib

    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"attack parameter names are words, got {key!r}")
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            close = difflib.get_close_matches(name, [*fields, "eps", "norm"], n=1)
            hint = ""
            if close and close[0] in ("eps", "norm") and close[0] not in fields:
                hint = f"; {close[0]} is not a parameter: set it with --{close[0]} (in a profile, {close[0]}: beside the parameters)"
            elif close:
                hint = f"; did you mean {close[0]!r}?"
            raise ConfigError(f"unknown parameter {key!r} for {attack or 'this attack'} (known: {known}){hint}")
        default = getattr(cls(), name)
        kwargs[name] = _convert(key, raw, type(default))
    return cls(**kwargs)


def _convert(key: str, raw: Any, typ: type) -> Any:
    """``raw`` (a CLI string or a YAML scalar) as ``typ``; never truncates, never guesses.

    ``2.5`` is not an int, ``true`` is not a number, ``2`` is not a bool, and NaN or inf is no
    valid number for any parameter.
    """
    bad = ConfigError(f"parameter {key}={raw!r} is not a valid {typ.__name__}")
    if typ is str:
        return str(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise bad
        try:
            value: Any = typ(text)
        except (ValueError, OverflowError):
            raise bad from None
    elif isinstance(raw, bool):
        if typ is not bool:
            raise bad
        return raw
    elif isinstance(raw, (int, float)):
        if typ is bool:
            raise bad
        if typ is int and isinstance(raw, float) and not (math.isfinite(raw) and raw.is_integer()):
            raise bad
        value = typ(raw)
    else:
        raise bad
    if isinstance(value, float) and not math.isfinite(value):
        raise bad
    return value


class Attack(ABC):
    """Template for every attack. Subclasses set the class variables and implement :meth:`run`."""

    name: ClassVar[str]
    """Registry name, e.g. ``pgd``."""
    backend: ClassVar[str] = "torch"
    """``torch`` (robaudit's batched implementation) or ``art`` (the reference)."""
    kind: ClassVar[AttackKind]
    norms: ClassVar[tuple[Norm, ...]]
    """Norms the attack supports; the first is its default."""
    supports_untargeted: ClassVar[bool] = True
    supports_targeted: ClassVar[bool] = True
    needs_gradients: ClassVar[bool] = True
    default_eps: ClassVar[dict[Norm, float]] = {}
    """Default budget per norm (fixed-eps attacks) for inputs in [0, 1]."""
    Params: ClassVar[type[AttackParams]] = AttackParams

    def __init__(self, params: AttackParams | None = None, *, norm: Norm | None = None, eps: float | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.norm = norm if norm is not None else self.norms[0]
        if self.norm not in self.norms:
            supported = ", ".join(n.value for n in self.norms)
            raise ConfigError(f"attack {self.name} does not support norm {self.norm.value} (supported: {supported})")
        if self.kind is AttackKind.FIXED_EPS:
            if eps is None:
                eps = self.default_eps.get(self.norm)
            if eps is None:
                raise ConfigError(f"attack {self.name} needs --eps for norm {self.norm.value}")
            if not (math.isfinite(eps) and eps >= 0):
                raise ConfigError(f"eps must be a finite number >= 0, got {eps}")
        self.eps = eps

    @classmethod
    def supports(cls, mode: TargetMode) -> bool:
        return cls.supports_targeted if mode.targeted else cls.supports_untargeted

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "norm": self.norm.value, "eps": self.eps,
                "params": dataclasses.asdict(self.params)}

    @abstractmethod
    def run(self, model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> torch.Tensor:
        """Attack one batch. ``x`` is on the model's device, inside ``self.clip``. Return ``x_adv`` like ``x``."""

    # set by generate() for the duration of a call, read by run() implementations
    clip: tuple[float, float] = (0.0, 1.0)
    # reset by generate(); run() implementations add the inputs their search gave up on while still escalating
    search_exhausted: int = 0
    # reset by generate(); decision-based run() implementations add the inputs they found no start for
    no_start: int = 0

    def generate(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        clip: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 128,
        seed: int = 0,
        device: torch.device | str | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> AttackOutput:
        """Run the attack on all of ``x`` (any device) and return CPU adversarial examples;
        ``on_batch(k)`` is called after each batch with the number of inputs done so far."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if targets is not None and not self.supports_targeted:
            raise ConfigError(f"attack {self.name} does not support targeted attacks")
        if targets is None and not self.supports_untargeted:
            raise ConfigError(f"attack {self.name} does not support untargeted attacks")
        if targets is not None:
            if targets.shape != labels.shape:
                raise ConfigError(f"got {tuple(targets.shape)} targets for {tuple(labels.shape)} labels: "
                                  "give one target class per input")
            same = int((targets.to(labels.device) == labels).sum())
            if same:
                raise ConfigError(f"{same} of {labels.shape[0]} targets equal the true label: a targeted attack "
                                  "needs a target class other than the label")
        dev = torch.device(device) if device is not None else module_device(model)
        counter = PassCounter()
        counted = CountingModel(model, counter)
        self.clip = clip
        self.search_exhausted = 0
        self.no_start = 0
        outs = []
        nonfinite_examples = 0
        start = time.perf_counter()
        for b, i in enumerate(range(0, x.shape[0], batch_size)):
            xb = x[i : i + batch_size].to(dev, torch.float32)
            crit = Criterion(labels[i : i + batch_size].to(dev),
                             None if targets is None else targets[i : i + batch_size].to(dev))
            gen = torch.Generator(device=dev)
            gen.manual_seed(seed * 1_000_003 + b)
            try:
                adv = self.run(counted, xb, crit, gen)
            except (ConfigError, AttackFailure):
                raise
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # an attack bug must not masquerade as a result
                raise AttackFailure(f"attack {self.name} failed: {type(exc).__name__}: {exc}") from exc
            adv = adv.detach().to(dev, torch.float32)
            if adv.shape == xb.shape:
                bad = ~torch.isfinite(adv).reshape(adv.shape[0], -1).all(dim=1)
                if bool(bad.any()):  # never zeroed in place: the sample falls back to its clean input
                    nonfinite_examples += int(bad.sum())
                    adv = torch.where(bad.view(-1, *([1] * (adv.dim() - 1))), xb, adv)
            adv = self.project(xb, adv)
            outs.append(adv.cpu())
            if on_batch is not None:
                on_batch(i + xb.shape[0])
        seconds = time.perf_counter() - start
        x_adv = torch.cat(outs) if outs else x.clone().float()
        return AttackOutput(x_adv, seconds, counter.forward, counter.backward, counter.nonfinite_logits,
                            counter.nonfinite_grads, nonfinite_examples, self.search_exhausted, self.no_start)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Clip into the valid range and, for fixed-eps attacks, onto the eps-ball around ``x``.

        Non-finite values are left alone: :meth:`generate` has already replaced samples holding
        them by their clean input and counted them, and the engine's bound check refuses any left.
        """
        if self.kind is AttackKind.FIXED_EPS and self.eps is not None:
            x_adv = project_ball(x, x_adv, self.eps, self.norm)
        return x_adv.clamp(self.clip[0], self.clip[1])


def project_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x`` (per sample)."""
    delta = x_adv - x
    if norm is Norm.LINF:
        delta = delta.clamp(-eps, eps)
    elif norm is Norm.L2:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = torch.clamp(eps / n, max=1.0).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * factor
    else:  # L0 budgets are enforced by the attacks themselves
        return x_adv
    return x + delta


def module_device(model: torch.nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for a module with neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def is_randomized(model: torch.nn.Module) -> bool:
    """Whether two forward passes of ``model`` on the same input may disagree: true for a model
    behind a randomised defence stack (TVM), seen through wrappers such as :class:`CountingModel`."""
    seen = 0
    while model is not None and seen < 16:
        if bool(getattr(model, "randomized", False)):
            return True
        model = getattr(model, "model", None)
        seen += 1
    return False


CONFIRM_DRAWS = 4
"""Fresh single draws of a randomised model (TVM) that a hit must also fool: the default
``confirm_draws`` of the minimisation attacks and HopSkipJump, and what an early-exit hit of BIM,
PGD or APGD must survive before the sample stops."""


def confirm_draws(model: torch.nn.Module, draws: int = CONFIRM_DRAWS) -> int:
    """How many fresh draws a hit must survive (:func:`refuted`): ``draws`` against a randomised
    model, 0 (no extra pass) otherwise.

    Against a randomised defence a gradient pass averages ``eot_samples`` draws (EOT), and one draw
    can be lucky, so either can call a point adversarial that a single fresh draw, the one that
    judges it, does not. Unconfirmed, early exit stopped samples there and lowered the per-draw
    success (demo CNN behind TVM, eot_samples 4, eps 0.2, 10 steps, 60 images, 3 seeds; full budget
    / early exit): PGD 0.59 / 0.53, BIM 0.53 / 0.47, APGD 0.60 / 0.58; confirmed, early exit gives
    0.57, 0.53, 0.60."""
    return draws if is_randomized(model) else 0


def _argmax_adversarial(logits: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """The criterion's own test (argmax), the default ``ok`` of :func:`refuted` and :func:`settled`."""
    return criterion.is_adversarial(logits)


def refuted(model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, hits: torch.Tensor, draws: int,
            ok: Callable[[torch.Tensor, Criterion], torch.Tensor] | None = None) -> torch.Tensor:
    """Rows among ``hits`` (a boolean mask over the rows of ``x`` and ``criterion``) that fail to be
    adversarial on at least one of ``draws`` fresh single draws of a randomised ``model`` (each a
    no-grad forward, as the deployed defence runs); all False when ``draws`` is 0.

    Minimisation attacks against a randomised defence otherwise keep the smallest perturbation
    that one lucky draw (or one EOT mean) called adversarial: on the shared adversarially trained
    CIFAR-10 CNN behind TVM, CW-Linf's examples fooled a fresh draw 18% of the time although 92%
    of them fooled at least one of 20 draws. Callers clear what this returns from their success
    mask. ``ok(logits, criterion)`` replaces the criterion's argmax test (e.g. to demand a
    confidence margin)."""
    out = torch.zeros_like(hits)
    if draws == 0 or not bool(hits.any()):
        return out
    test = ok if ok is not None else _argmax_adversarial
    idx = hits.nonzero().squeeze(1)
    good = torch.ones(idx.numel(), dtype=torch.bool, device=hits.device)
    with torch.no_grad():
        for _ in range(draws):
            rows = good.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            good[rows] = test(model(x[idx[rows]]), criterion.subset(idx[rows]))
    out[idx] = ~good
    return out


def settled(model: torch.nn.Module, x: torch.Tensor, criterion: Criterion, logits: torch.Tensor, draws: int,
            ok: Callable[[torch.Tensor, Criterion], torch.Tensor] | None = None) -> torch.Tensor:
    """Rows of ``x`` that are adversarial already before an attack starts: by ``logits`` (one pass
    of ``model`` on ``x``) and, against a randomised model, on ``draws`` fresh draws too.

    Minimisation attacks return such inputs unchanged; decided from one draw of a randomised
    defence, an input that draw happened to misclassify went unattacked although the draw that
    judges it later classifies it correctly. ``ok`` as in :func:`refuted`."""
    adv = (ok if ok is not None else _argmax_adversarial)(logits, criterion)
    return adv & ~refuted(model, x, criterion, adv, draws, ok)
