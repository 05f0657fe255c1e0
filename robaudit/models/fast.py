"""Faster copies of a TorchScript network for the CPU, checked against the original before use.

Attacks, CLEVER and detection spend nearly all their time in the model's forward and backward
passes, so the loader gives a TorchScript classifier two prepared copies of its network:

``grad`` (forward passes that need an input gradient)
    weights in channels-last memory format, then ``torch.jit.freeze`` (parameters become
    constants; batch norm is folded into the preceding convolution). Channels-last lets oneDNN
    keep activations in the layout its convolutions produce and gives max pooling a vectorised
    kernel; on the shared MNIST LeNet-5 the NCHW ``max_pool2d`` alone took 60% of a forward pass.
``infer`` (forward passes without gradient: predictions, decision-based attacks, success checks)
    ``torch.jit.optimize_for_inference`` on a frozen copy: oneDNN layouts with pre-packed weights,
    no autograd support at all.

Measured on this project's CPU, one thread, batch 200 (``bench/results/model_speed.md``, from
``bench/model_speed.py``): MNIST LeNet-5 forward 3.9x, forward+backward 1.7x; CIFAR-10 ResNet-20
1.5x / 1.3x; the adversarially trained CIFAR-10 CNN-A 1.2x / 0.94x (its one slower case). Either
copy is used only if, on a probe batch of random inputs in the clip range, its logits match the
original's within ``_ATOL`` of the logit scale (and the gradient copy's input gradient within
``_GRAD_RTOL``); otherwise the original serves, and ``ModelInfo.runtime`` says why.

ONNX models that onnx2torch converts are traced to TorchScript first (on 3 inputs; the checks run
on 10 and on 1, so a traced-in batch size is caught). Only on the CPU: on CUDA the copies are not
built (their effect there is unmeasured). Set the
environment variable ``ROBAUDIT_FAST_MODEL=0`` to turn them off altogether. The original
network (``TorchClassifier.net``) is kept untouched: adversarial training fine-tunes that one and
drops the copies first.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import torch

_ATOL = 1e-4
"""Largest |logit difference| of a prepared copy, relative to max(1, largest |logit|)."""
_GRAD_RTOL = 1e-2
"""Largest ||grad difference|| / ||grad|| of the grad copy on the probe batch."""
_PROBE = 8
"""Random inputs in the probe batch (plus one all-low and one all-high input)."""
ENV = "ROBAUDIT_FAST_MODEL"
"""``0``/``false``/``off``: do not prepare faster copies."""


@dataclass(frozen=True)
class FastCopies:
    """What :func:`prepare` built: either copy may be ``None`` (then the original serves)."""

    grad: torch.nn.Module | None
    infer: torch.nn.Module | None
    note: str
    """One line for the model info: which copies are in use, or why none is."""


def no_copies(why: str) -> FastCopies:
    """The original network serves everything, and ``why`` (copies not wanted, or not applicable)."""
    return FastCopies(None, None, f"the original network runs ({why})")


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def _clone(net: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    torch.jit.save(net, buf)
    buf.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(buf, map_location="cpu").eval()


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward returns a contiguous gradient: a channels-last network hands back
    channels-last input gradients, and attack code may ``view`` them."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.contiguous()


class GradCopy(torch.nn.Module):
    """The channels-last frozen network, returning contiguous input gradients."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x = _ContiguousGrad.apply(x)
        return self.net(x)


def _probe(shape: tuple[int, int, int], clip: tuple[float, float]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(12345)
    lo, hi = clip
    x = torch.rand((_PROBE, *shape), generator=gen) * (hi - lo) + lo
    return torch.cat([x, torch.full((1, *shape), lo), torch.full((1, *shape), hi)])


def _logit_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape or not bool(torch.isfinite(b).all()):
        return float("inf")
    return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))


def _input_grad(net: torch.nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((net(xr) * w).sum(), xr)
    return g


def prepare(net: torch.nn.Module, shape: tuple[int, int, int], clip: tuple[float, float],
            device: torch.device) -> FastCopies:
    """Build and check the faster copies of ``net`` (an eval-mode module on ``device``; a module that is
    not TorchScript, such as an onnx2torch conversion, is traced first, and only the checks decide)."""
    if not enabled():
        return FastCopies(None, None, f"model copies for speed turned off ({ENV}=0)")
    if device.type != "cpu":
        return no_copies(f"on {device.type}; the prepared copies are for the CPU")
    x = _probe(shape, clip)
    with torch.no_grad():
        ref = net(x)
    base = net
    if not isinstance(net, torch.jit.ScriptModule):  # an ONNX model converted by onnx2torch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base = torch.jit.trace(net, x[:3], check_trace=False).eval()
        except Exception as exc:  # noqa: BLE001 - the original serves
            return FastCopies(None, None, f"the original network runs: tracing it failed ({type(exc).__name__})")
    def logit_gap(copy: torch.nn.Module) -> float:
        """Worst logit gap on the probe batch and on its first input alone (batch sizes other than a
        trace's, in case it baked one in)."""
        with torch.no_grad():
            return max(_logit_gap(ref, copy(x)), _logit_gap(ref[:1], copy(x[:1])))

    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(54321))
    ref_grad = _input_grad(net, x, w)
    grad: torch.nn.Module | None = None
    infer: torch.nn.Module | None = None
    why: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grad = GradCopy(torch.jit.freeze(_clone(base).to(memory_format=torch.channels_last)))
            gap = logit_gap(grad)
            g = _input_grad(grad, x, w)
            ggap = float((g - ref_grad).norm()) / max(float(ref_grad.norm()), 1e-12)
        if not (gap <= _ATOL and ggap <= _GRAD_RTOL and g.is_contiguous()):
            why.append(f"gradient passes run the original: its copy differs (logits {gap:.1e}, gradient {ggap:.1e})")
            grad = None
        else:  # TorchScript optimises a graph on its second run: do it here, not in the first attack's timing
            _input_grad(grad, x, w)
    except Exception as exc:  # noqa: BLE001 - any failure only means the original serves
        why.append(f"gradient passes run the original: its copy failed ({type(exc).__name__})")
        grad = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            infer = torch.jit.optimize_for_inference(torch.jit.freeze(_clone(base)))
            gap = logit_gap(infer)
        if not gap <= _ATOL:
            why.append(f"predictions run the original: their copy differs (logits {gap:.1e})")
            infer = None
    except Exception as exc:  # noqa: BLE001
        why.append(f"predictions run the original: their copy failed ({type(exc).__name__})")
        infer = None
    used = [name for name, m in (("a channels-last frozen copy for gradient passes", grad),
                                 ("a oneDNN inference copy for predictions", infer)) if m is not None]
    note = ("runs from " + " and ".join(used) + ", checked against the original") if used else ""
    return FastCopies(grad, infer, "; ".join([note] * bool(note) + why))
