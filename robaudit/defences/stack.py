"""Stacks of pre-processing defences, and a classifier defended by one.

A :class:`DefenceStack` applies preprocessors in the given order (``ss,jpeg`` smooths first, then
compresses). Against white-box attacks it uses BPDA (Backward Pass Differentiable Approximation,
Athalye, Carlini and Wagner, ICML 2018, https://arxiv.org/abs/1802.00420): the forward pass of a
non-differentiable step is exact, its backward pass is the identity (straight-through,
``x + (f(x) - x).detach()``), so attacks get usable gradients instead of zeros. Differentiable
steps (the median filter) keep their true gradient. With ``bpda=False`` a non-differentiable step
passes a zero gradient (what plain autograd gives through rounding), which shows gradient masking.

A :class:`DefendedClassifier` is a :class:`~robaudit.models.interface.Classifier` computing
``model(stack(x))``, so every attack and the evaluation code use it unchanged. Against a randomised
stack (TVM) it supports Expectation over Transformation (EOT, Athalye et al. 2018): while gradients
are being recorded, ``forward`` averages the logits of ``eot_samples`` independent draws (one
batched call on ``eot_samples`` copies of the input). The gradient of the averaged logits is the
average of the per-draw logit gradients, so any loss linear in the logits (e.g. the C&W margin
on a fixed pair of classes) gets exactly the EOT gradient; for cross-entropy it is the gradient of
the loss of the mean logits, a standard, slightly smoother EOT variant. Without gradients
(``predict``, evaluation) each call is a single draw, as the deployed defence would run.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from robaudit.defences.interface import DefenceName, DefenceParams, Preprocessor, params_from_mapping
from robaudit.defences.registry import DEFENCES
from robaudit.errors import ConfigError
from robaudit.models.interface import Classifier

_NONE = ("", "none")


def parse_stack(spec: str) -> tuple[str, ...]:
    """``"ss,jpeg"`` (or ``"ss+jpeg"``) -> ``("ss", "jpeg")``; ``"none"`` or ``""`` -> ``()``.

    Order is kept (it is the order of application). Unknown names and a name given twice are a
    :class:`ConfigError`."""
    text = spec.strip().lower()
    if text in _NONE:
        return ()
    parts = [p.strip() for p in text.replace("+", ",").split(",")]
    if any(p == "" for p in parts):
        raise ConfigError(f"empty defence name in stack {spec!r} (e.g. ss,jpeg)")
    return _check_names(parts, spec)


ALL_COMBINATIONS = "all-combinations"
"""``--defences`` value for no defence plus every non-empty stack of ss, jpeg and tvm."""


def parse_stacks(values: str | Sequence[str] | None) -> list[tuple[str, ...]]:
    """``--defences`` values -> stacks to evaluate, the undefended model always first.

    Each value is ``all-combinations``, one stack (``ss,jpeg``, ``ss+jpeg`` or ``none``) or several
    separated by ``;``; the option may be repeated. A stack named twice is a :class:`ConfigError`
    (it would be evaluated twice under the same name); ``all-combinations`` adds only the stacks
    not already listed."""
    items = [values] if isinstance(values, str) else list(values or [])
    stacks: list[tuple[str, ...]] = [()]
    named: set[tuple[str, ...]] = set()  # stacks the user named one by one (all-combinations may repeat them)
    for raw in items:
        for part in raw.split(";"):
            every = part.strip().lower() == ALL_COMBINATIONS
            for stack in all_combinations() if every else [parse_stack(part)]:
                if not every and stack:
                    if stack in named:
                        raise ConfigError(f"--defences lists the stack {'+'.join(stack)} twice")
                    named.add(stack)
                if stack not in stacks:
                    stacks.append(stack)
    return stacks


def _check_names(names: Iterable[str | DefenceName], spec: object) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        value = n.value if isinstance(n, DefenceName) else DefenceName.parse(str(n)).value
        if value in out:
            raise ConfigError(f"defence {value!r} appears twice in stack {spec!r}: a stack applies each defence once")
        out.append(value)
    return tuple(out)


def all_combinations(names: Sequence[str] = ("ss", "jpeg", "tvm")) -> list[tuple[str, ...]]:
    """No defence, then every non-empty stack of ``names``: by size, then in the given order.

    ``("ss", "jpeg", "tvm")`` gives 8: ``()``, ``(ss,)``, ``(jpeg,)``, ``(tvm,)``,
    ``(ss, jpeg)``, ``(ss, tvm)``, ``(jpeg, tvm)``, ``(ss, jpeg, tvm)`` (the order of
    ``itertools.combinations``, as profiles' ``combinations_of`` expands)."""
    checked = _check_names(names, ",".join(str(n) for n in names))
    return [c for r in range(len(checked) + 1) for c in itertools.combinations(checked, r)]


def _params(name: DefenceName, params: Mapping[str, Mapping[str, Any]] | None) -> DefenceParams:
    cls = DEFENCES[name].Params
    overrides = (params or {}).get(name.value)
    if overrides is None:
        return cls()
    if isinstance(overrides, DefenceParams):
        if not isinstance(overrides, cls):
            raise ConfigError(f"parameters for defence {name.value} must be {cls.__name__}")
        return overrides
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"parameters for defence {name.value} must be a mapping NAME: VALUE")
    return params_from_mapping(cls, overrides, name.value)


def _validate_params(params: Mapping[str, Mapping[str, Any]] | None) -> dict[DefenceName, DefenceParams]:
    """Every entry of ``params`` parsed (unknown defences or keys are a :class:`ConfigError`)."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ConfigError("defence parameters must be a mapping DEFENCE: {NAME: VALUE}")
    out = {}
    for key in params:
        name = DefenceName.parse(str(key))
        out[name] = _params(name, {name.value: params[key]})
    return out


class DefenceStack(torch.nn.Module):
    """Preprocessors applied in order, with BPDA through the non-differentiable ones (see module docs)."""

    def __init__(self, steps: Sequence[Preprocessor], *, bpda: bool = True) -> None:
        super().__init__()
        _check_names([s.name for s in steps], "+".join(s.name.value for s in steps))
        self.steps = torch.nn.ModuleList(steps)
        self.bpda = bpda

    def _steps(self) -> list[Preprocessor]:
        return list(self.steps)  # type: ignore[arg-type]

    @property
    def names(self) -> tuple[str, ...]:
        """The stack's defence names, in order of application."""
        return tuple(s.name.value for s in self._steps())

    @property
    def label(self) -> str:
        """``ss+jpeg``, or ``none`` for the empty stack."""
        return "+".join(self.names) or "none"

    @property
    def randomized(self) -> bool:
        """True when any step is randomised (then attacks need EOT)."""
        return any(s.randomized for s in self._steps())

    @property
    def differentiable(self) -> bool:
        """True when autograd alone gives the true gradient (every step differentiable)."""
        return all(s.differentiable for s in self._steps())

    def gradient_mode(self, step: Preprocessor) -> str:
        """How gradients pass ``step``: ``autograd``, ``bpda`` (identity) or ``zero``."""
        if step.differentiable:
            return "autograd"
        return "bpda" if self.bpda else "zero"

    def describe(self) -> list[dict[str, Any]]:
        """One entry per step, in order: name, parameters, facts and how its gradient is formed."""
        return [{**s.describe(), "gradient": self.gradient_mode(s)} for s in self._steps()]

    def reseed(self, seed: int | None = None) -> None:
        """Restart the random steps' private generators (from ``seed``, or their ``params.seed``)."""
        for s in self._steps():
            reseed = getattr(s, "reseed", None)
            if s.randomized and callable(reseed):
                reseed(seed)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        track = torch.is_grad_enabled() and x.requires_grad
        for step in self._steps():
            out = step(x, generator)
            if track and not step.differentiable:
                # BPDA: exact forward, identity backward; without BPDA: zero backward.
                out = x + (out - x).detach() if self.bpda else out.detach() + 0.0 * x
            x = out
        return x


def build_stack(
    names: Sequence[str | DefenceName] | str,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    bpda: bool = True,
    clip: tuple[float, float] = (0.0, 1.0),
) -> DefenceStack:
    """A :class:`DefenceStack` of ``names`` (a sequence, or a spec for :func:`parse_stack`).

    ``params`` overrides defaults per defence, e.g. ``{"ss": {"window": 5}}``. Every entry is
    validated, also for defences not in this stack (so a profile's ``defence_params`` fails early);
    unknown defences, unknown keys and bad values are a :class:`ConfigError`. ``clip`` is the
    pixel range of the inputs (JPEG maps it to 0..255, TVM solves on it rescaled to [0, 1])."""
    stack_names = parse_stack(names) if isinstance(names, str) else _check_names(names, names)
    parsed = _validate_params(params)
    steps = []
    for value in stack_names:
        member = DefenceName(value)
        prm = parsed.get(member, DEFENCES[member].Params())
        steps.append(DEFENCES[member](prm, clip=clip))
    return DefenceStack(steps, bpda=bpda)


class DefendedClassifier(Classifier):
    """``model(stack(x))`` as a :class:`Classifier`, with EOT against randomised stacks (see module docs).

    The :class:`~robaudit.models.interface.ModelInfo` is the model's, with a note naming the stack;
    ``white_box`` is preserved (a black-box model stays black-box)."""

    def __init__(self, model: Classifier, stack: DefenceStack, *, eot_samples: int = 1) -> None:
        if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
            raise ConfigError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
        info = model.info
        note = _note(stack, eot_samples)
        super().__init__(dataclasses.replace(info, notes=(*info.notes, note)))
        self.model = model
        self.stack = stack.to(model.device)
        self.eot_samples = eot_samples
        self.eval()

    @property
    def base(self) -> Classifier:
        """The undefended model."""
        return self.model

    @property
    def randomized(self) -> bool:
        """Whether the stack draws fresh randomness on every call (TVM's pixel dropout)."""
        return bool(self.stack.randomized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.eot_samples
        if k > 1 and self.stack.randomized and torch.is_grad_enabled() and x.shape[0] > 0:
            n = x.shape[0]
            logits: torch.Tensor = self.model(self.stack(x.repeat(k, *([1] * (x.dim() - 1)))))
            return logits.view(k, n, *logits.shape[1:]).mean(0)
        out: torch.Tensor = self.model(self.stack(x))
        return out


def _note(stack: DefenceStack, eot_samples: int) -> str:
    parts = [f"defended by pre-processing stack {stack.label}"]
    masked = [s.name.value for s in stack._steps() if not s.differentiable]
    if masked:
        how = "BPDA (identity backward)" if stack.bpda else "zero gradients (no BPDA)"
        parts.append(f"gradients through {', '.join(masked)} by {how}")
    if stack.randomized:
        parts.append(f"randomised: EOT over {eot_samples} draw(s) per gradient")
    return "; ".join(parts)


def defend_model(
    model: Classifier,
    names_or_stack: Sequence[str | DefenceName] | str | DefenceStack,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    bpda: bool = True,
    eot_samples: int = 1,
) -> Classifier:
    """``model`` behind a defence stack; the model itself (unchanged) for an empty stack.

    ``names_or_stack`` is a sequence of names, a spec such as ``"ss,jpeg"``, or a built
    :class:`DefenceStack` (then ``params`` and ``bpda`` are the stack's own). The stack uses the
    model's clip range."""
    if isinstance(names_or_stack, DefenceStack):
        stack = names_or_stack
    else:
        stack = build_stack(names_or_stack, params, bpda=bpda, clip=model.clip)
    if not stack.names:
        if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
            raise ConfigError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
        return model
    return DefendedClassifier(model, stack, eot_samples=eot_samples)


__all__ = [
    "DefenceStack",
    "DefendedClassifier",
    "all_combinations",
    "build_stack",
    "defend_model",
    "parse_stack",
]


def reseed_defences(model: Any, seed: int) -> None:
    """Restart a defended model's random pre-processing (TVM masks) from ``seed``, so what it
    computes depends on that seed only, never on what ran before (resume, run order, other norms).
    A no-op for models without a randomised stack."""
    stack = getattr(model, "stack", None)
    reseed = getattr(stack, "reseed", None)
    if callable(reseed):
        reseed(seed)
