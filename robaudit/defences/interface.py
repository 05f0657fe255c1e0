"""The one interface every pre-processing defence presents: a module from images to images.

A :class:`Preprocessor` is a ``torch.nn.Module`` whose ``forward`` takes a float NCHW batch in
pixel space (inside ``clip``, on any device) and returns a batch of the same shape, dtype and
device, again inside ``clip``. Everything is batched in torch: no per-image Python loops and no
numpy round trips.

Each defence declares two facts the rest of robaudit relies on:

``differentiable``
    whether autograd through ``forward`` gives a useful gradient. Non-differentiable steps
    (rounding in JPEG, an iterative solver in TVM) run under ``torch.no_grad()``; a
    :class:`~robaudit.defences.stack.DefenceStack` replaces their backward pass by the identity
    (BPDA, Athalye et al. 2018) so white-box attacks still get gradients.
``randomized``
    whether two calls on the same input may differ (TVM's pixel-dropout mask). Attacks against a
    randomised defence need Expectation over Transformation (EOT).

Parameters are a frozen dataclass per defence (:attr:`Preprocessor.Params`) with documented
defaults; user overrides (profiles, ``--defence-param``) go through :func:`params_from_mapping`,
which refuses unknown keys and values of the wrong type or range with a
:class:`~robaudit.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch

from robaudit.errors import ConfigError


class DefenceName(str, Enum):
    """The study's three pre-processing defences."""

    SS = "ss"
    """Spatial smoothing: a median filter (Xu et al. 2018, feature squeezing)."""
    JPEG = "jpeg"
    """JPEG compression (Dziugaite et al. 2016; Das et al. 2017)."""
    TVM = "tvm"
    """Total variation minimisation with random pixel dropout (Guo et al. 2018)."""

    @property
    def description(self) -> str:
        """Human-readable name, e.g. for report tables."""
        return _DESCRIPTIONS[self]

    @classmethod
    def parse(cls, value: str) -> "DefenceName":
        """``"SS"``/``" jpeg "`` -> member; unknown names are a :class:`ConfigError` listing the known ones."""
        v = value.strip().lower()
        try:
            return cls(v)
        except ValueError:
            raise ConfigError(f"unknown defence {value.strip()!r} (known: {', '.join(defence_names())})") from None


_DESCRIPTIONS: dict[DefenceName, str] = {
    DefenceName.SS: "spatial smoothing (median filter)",
    DefenceName.JPEG: "JPEG compression",
    DefenceName.TVM: "total variance minimisation",
}


def defence_names() -> list[str]:
    """Every defence name, in the enum's (canonical) order."""
    return [d.value for d in DefenceName]


@dataclass(frozen=True)
class DefenceParams:
    """Base of every defence's parameter dataclass. Fields are documented defaults.

    Subclasses validate their values in :meth:`check` (called from ``__post_init__``) and raise
    :class:`ConfigError` for values out of range, so an invalid defence cannot be built.
    """

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` when a value is out of range. The base accepts everything."""


def params_from_mapping(cls: type[DefenceParams], overrides: Mapping[str, Any], defence: str) -> DefenceParams:
    """Build ``cls`` from user overrides ``{name: value}``.

    Keys may use ``-`` for ``_``. Values may already be typed (YAML) or strings (command line);
    strings are converted to the field's type. Unknown keys, wrong types (a bool for an int, a
    float for an int, text that does not parse) and out-of-range values are a :class:`ConfigError`
    naming the defence and the parameter.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, raw in overrides.items():
        name = str(key).strip().replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"unknown parameter {key!r} for defence {defence} (known: {known})")
        kwargs[name] = _convert(f"{defence}.{name}", raw, hints[name])
    return cls(**kwargs)


def _convert(key: str, raw: Any, hint: Any) -> Any:
    """``raw`` as a value of type ``hint`` (``int``, ``float``, ``bool``, ``str`` or ``X | None``)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null")):
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if raw is None:
        raise ConfigError(f"parameter {key} cannot be empty (expected {hint.__name__})")
    if isinstance(raw, str):
        text = raw.strip()
        try:
            if hint is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return hint(text)
        except ValueError:
            raise ConfigError(f"parameter {key}={raw!r} is not a valid {hint.__name__}") from None
    if hint is bool:
        if isinstance(raw, bool):
            return raw
    elif hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
    elif hint is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
    elif isinstance(raw, hint):
        return raw
    raise ConfigError(f"parameter {key}={raw!r} is not a valid {hint.__name__}")


class Preprocessor(torch.nn.Module, ABC):
    """Template for every defence. Subclasses set the class variables and implement :meth:`transform`.

    The final :meth:`forward` checks the input, runs :meth:`transform` (under ``torch.no_grad()``
    when the defence is not differentiable) and clips the result into ``clip``.
    """

    name: ClassVar[DefenceName]
    """Registry name."""
    differentiable: ClassVar[bool]
    """True when autograd through :meth:`forward` gives useful input gradients."""
    randomized: ClassVar[bool]
    """True when two calls on the same input may give different outputs."""
    Params: ClassVar[type[DefenceParams]] = DefenceParams

    def __init__(self, params: DefenceParams | None = None, *, clip: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        params = params if params is not None else self.Params()
        if not isinstance(params, self.Params):
            raise ConfigError(f"defence {self.name.value} needs {self.Params.__name__}, got {type(params).__name__}")
        lo, hi = float(clip[0]), float(clip[1])
        if not lo < hi:
            raise ConfigError(f"clip range must have min < max, got {clip}")
        self.params = params
        self.clip = (lo, hi)

    def describe(self) -> dict[str, Any]:
        """Name, parameters and the two facts attacks need, as plain values (for reports)."""
        return {"name": self.name.value, "params": dataclasses.asdict(self.params),
                "differentiable": self.differentiable, "randomized": self.randomized}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.params).items())

    @abstractmethod
    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Defend one batch: ``x`` is float NCHW inside ``self.clip``; return a tensor like ``x``.

        ``generator`` is only used by randomised defences (``None``: their own default source)."""

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The defended batch: same shape, dtype and device as ``x``, inside ``clip``.

        Non-differentiable defences return a tensor without autograd history (see
        :class:`~robaudit.defences.stack.DefenceStack` for BPDA)."""
        if x.dim() != 4:
            raise ValueError(f"defence {self.name.value} expects an NCHW batch, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"defence {self.name.value} expects float pixels, got {x.dtype}")
        if x.shape[0] == 0:
            return x.clone()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.differentiable):
            out = self.transform(x if self.differentiable else x.detach(), generator)
            return out.to(x.dtype).clamp(self.clip[0], self.clip[1])
