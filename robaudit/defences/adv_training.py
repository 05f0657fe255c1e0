""""Fast is better than free" adversarial training (Wong, Rice and Kolter, ICLR 2020).

Each minibatch is attacked with one FGSM step from a uniformly random start inside the eps-ball
(step ``alpha``, 1.25 eps by default), the perturbation is projected back onto the ball and the
clip range, and the network takes one optimiser step on the perturbed batch. The learning rate
follows a cyclic (triangular) schedule updated every iteration. FGSM training can collapse
("catastrophic overfitting": FGSM accuracy rises while PGD accuracy falls to zero), so after every
epoch a PGD attack on a held-out validation slice measures robust accuracy, and training stops
early when it drops by more than ``overfit_drop`` below the best epoch; the best epoch's weights
are what is written.

The engine works on any white-box :class:`~robaudit.models.Classifier` whose network is a
TorchScript module (parameters are trained in place, the result is saved with
``torch.jit.save``). Progress is reported through :class:`TrainObserver`; a checkpoint is written
atomically after every epoch (``torch.save`` of tensors and plain values only, read back with
``weights_only=True``), so a killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from robaudit.errors import ConfigError, ModelLoadError


@dataclass(frozen=True)
class FastAtConfig:
    """Hyper-parameters of one training run (defaults follow the paper's MNIST setting)."""

    eps: float
    """Linf budget the model is trained against, in pixel space."""
    alpha: float | None = None
    """FGSM step from the random start; ``None``: 1.25 * eps (the paper's choice)."""
    epochs: int = 10
    batch_size: int = 100
    lr_max: float = 5e-3
    """Peak of the cyclic learning rate."""
    lr_peak_at: float = 0.4
    """Fraction of the run at which the triangular schedule peaks (then decays linearly to 0)."""
    eps_warmup: float = 0.3
    """Fraction of the run over which the training eps (and step) ramp linearly from 0 to ``eps``.
    Not in the paper; without it FGSM training of the shared MNIST LeNet-5 at eps 0.3 overfitted
    catastrophically here (FGSM training accuracy 87%, PGD accuracy 0% after 3 epochs); with a ramp
    over half of a 5-epoch run on 12000 images it reached 42% PGD-10 accuracy. 0 disables it."""
    optimizer: str = "adam"
    """``adam`` (paper's MNIST setting) or ``sgd`` (momentum 0.9, weight decay 5e-4; CIFAR setting)."""
    val_size: int = 1000
    """Training images held out (before training) to watch PGD accuracy for early stopping; 0: no
    validation, no early stop, and the last epoch's weights are written."""
    val_pgd_steps: int = 10
    overfit_drop: float = 0.2
    """Stop when validation PGD accuracy falls this far below the best epoch's."""
    reset: bool = False
    """Re-initialise the network's weights before training instead of fine-tuning them."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.eps < math.inf):
            raise ConfigError(f"--eps must be finite and > 0, got {self.eps}")
        if self.alpha is not None and not (0 < self.alpha < math.inf):
            raise ConfigError(f"--alpha must be finite and > 0, got {self.alpha}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not (0 < self.lr_max < math.inf):
            raise ConfigError(f"--lr-max must be finite and > 0, got {self.lr_max}")
        if not 0.0 <= self.eps_warmup < 1.0:
            raise ConfigError(f"--eps-warmup must be in [0, 1), got {self.eps_warmup}")
        if not 0.0 < self.lr_peak_at < 1.0:
            raise ConfigError(f"lr_peak_at must be in (0, 1), got {self.lr_peak_at}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"--optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.val_size < 0 or self.val_pgd_steps < 1:
            raise ConfigError("--val-size must be >= 0 and the validation PGD steps >= 1")

    @property
    def step(self) -> float:
        return self.alpha if self.alpha is not None else 1.25 * self.eps

    def digest(self) -> str:
        """What a checkpoint must match to be resumed (the learning-rate schedule spans all epochs)."""
        body = dataclasses.asdict(self)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EpochRecord:
    epoch: int
    lr_end: float
    train_loss: float
    train_adv_accuracy: float
    """Accuracy on the FGSM-perturbed training batches (during the epoch)."""
    val_clean_accuracy: float | None
    val_pgd_accuracy: float | None
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    resumed_from: int = 0
    """Epochs taken from a checkpoint instead of run."""


class TrainObserver(Protocol):
    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch_finished(self) -> None: ...

    def epoch_finished(self, record: EpochRecord) -> None: ...

    def warn(self, text: str) -> None: ...


class NullTrainObserver:
    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch_finished(self) -> None:
        pass

    def epoch_finished(self, record: EpochRecord) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


def trainable_network(model: Any) -> torch.nn.Module:
    """The TorchScript network inside a loaded classifier, ready to train (or a one-line refusal)."""
    net = getattr(model, "net", None)
    if not getattr(model, "white_box", False) or net is None:
        raise ModelLoadError("adversarial training needs a white-box model (TorchScript, or ONNX converted to torch)")
    if hasattr(model, "drop_copies"):
        model.drop_copies()  # the frozen copies would keep serving the untrained weights
    if not isinstance(net, torch.jit.ScriptModule):
        try:
            net = torch.jit.script(net)
        except Exception as exc:  # noqa: BLE001 - any scripting failure means we cannot save the result
            raise ModelLoadError(f"the network cannot be saved as TorchScript ({type(exc).__name__}); "
                                 "train a TorchScript (.pt) model instead") from None
        model.net = net
    if not list(net.parameters()):
        raise ModelLoadError("the model has no parameters to train")
    return net


def reset_parameters(net: torch.nn.Module, generator: torch.Generator) -> None:
    """Kaiming-uniform weights and zero biases for every parameter (TorchScript hides ``reset_parameters``)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                bound = math.sqrt(6.0 / fan_in) / math.sqrt(2.0)  # kaiming_uniform with a=sqrt(5)-like scale
                p.copy_(torch.empty_like(p).uniform_(-bound, bound, generator=generator))
            elif name.endswith("weight"):  # normalisation scales
                p.fill_(1.0)
            else:
                p.zero_()


def cyclic_lr(it: int, total: int, lr_max: float, peak_at: float) -> float:
    """Triangular schedule: 0 -> lr_max at ``peak_at`` of the run -> 0 at the end."""
    t = it / max(1, total)
    if t <= peak_at:
        return lr_max * t / peak_at
    return lr_max * max(0.0, (1.0 - t) / (1.0 - peak_at))


def _fgsm_rs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
             clip: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
    delta = ((x + delta).clamp(*clip) - x).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(*clip).detach()


def pgd_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                 clip: tuple[float, float], batch_size: int, seed: int) -> tuple[float, float]:
    """(clean accuracy, PGD-``steps`` accuracy at Linf ``eps``, step 2.5 eps/steps, random start)."""
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    dev = next(iter(model.parameters())).device
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    alpha = 2.5 * eps / steps
    clean = robust = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        adv = (xb + (torch.rand(xb.shape, generator=gen, device=dev) * 2 - 1) * eps).clamp(*clip)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), yb)
            (g,) = torch.autograd.grad(loss, adv)
            adv = (xb + (adv.detach() + alpha * g.sign() - xb).clamp(-eps, eps)).clamp(*clip)
        with torch.no_grad():
            robust += int((model(adv).argmax(1) == yb).sum())
    return clean / x.shape[0], robust / x.shape[0]


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def train_fast_at(model: Any, x: torch.Tensor, y: torch.Tensor, cfg: FastAtConfig, out: Path,
                  observer: TrainObserver | None = None, resume: bool = True) -> TrainResult:
    """Train ``model`` (a white-box Classifier in pixel space) in place and write its network to ``out``.

    ``x``/``y`` are the training images (float32 NCHW in the model's clip range) and labels; the
    last ``cfg.val_size`` images of a seeded permutation are held out for early stopping.
    """
    obs = observer or NullTrainObserver()
    net = trainable_network(model)
    dev = model.device
    clip = model.clip
    n = int(x.shape[0])
    if cfg.eps >= clip[1] - clip[0]:
        raise ConfigError(f"--eps {cfg.eps:g} is not below the input range {clip[1] - clip[0]:g} ({clip[0]:g}..{clip[1]:g}): "
                          "the attack could turn any image into any other (give eps in the model's pixel space, "
                          "e.g. 0.3 for MNIST, 8/255 for CIFAR-10 in [0, 1])")
    if n <= cfg.val_size:
        raise ConfigError(f"the training data has {n} images, not more than --val-size {cfg.val_size}")
    gen_cpu = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen_cpu)
    val_idx, train_idx = perm[n - cfg.val_size:], perm[: n - cfg.val_size]
    x_val, y_val = x[val_idx], y[val_idx]
    n_train = int(train_idx.numel())
    batches = (n_train + cfg.batch_size - 1) // cfg.batch_size
    total_iters = cfg.epochs * batches

    if cfg.reset:
        reset_parameters(net, torch.Generator().manual_seed(cfg.seed))
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=0.0)
    else:
        opt = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=5e-4)

    result = TrainResult()
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    best_pgd = -1.0
    start_epoch = 0
    ckpt = checkpoint_path(out)
    source = _source_digest(best_state, x, y)
    if resume and ckpt.exists():
        state = _load_checkpoint(ckpt)
        if state.get("digest") != cfg.digest() or state.get("n") != n:
            raise ConfigError(f"{ckpt} was written by a run with other settings or data{_differences(state, cfg, n)}: "
                              "delete it, or pass --restart to start over")
        if state.get("source") != source:
            raise ConfigError(f"{ckpt} was written by a run that started from another model or trained on other "
                              "images: delete it, or pass --restart to start over")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        best_state = state["best"]
        best_pgd = float(state["best_pgd"])
        result.history = [EpochRecord(**h) for h in state["history"]]
        result.best_epoch = int(state["best_epoch"])
        start_epoch = int(state["epoch"])
        result.resumed_from = start_epoch
        torch.set_rng_state(state["rng"])
        if state.get("stopped"):
            result.stopped_early = True
            start_epoch = cfg.epochs
    gen = torch.Generator(device=dev)
    for epoch in range(start_epoch, cfg.epochs):
        gen.manual_seed(cfg.seed * 1_000_003 + epoch)
        order = train_idx[torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed + 7919 * epoch))]
        obs.epoch_started(epoch + 1, cfg.epochs, batches)
        t0 = time.perf_counter()
        net.train()
        loss_sum, correct, seen, lr = 0.0, 0, 0, 0.0
        for b in range(batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            lr = cyclic_lr(epoch * batches + b + 1, total_iters, cfg.lr_max, cfg.lr_peak_at)
            for group in opt.param_groups:
                group["lr"] = lr
            ramp = min(1.0, (epoch * batches + b + 1) / (cfg.eps_warmup * total_iters)) if cfg.eps_warmup else 1.0
            x_adv = _fgsm_rs(model, xb, yb, cfg.eps * ramp, cfg.step * ramp, clip, gen)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * int(yb.numel())
            correct += int((logits.argmax(1) == yb).sum())
            seen += int(yb.numel())
            obs.batch_finished()
        net.eval()
        val_clean: float | None = None
        val_pgd: float | None = None
        if cfg.val_size:
            val_clean, val_pgd = pgd_accuracy(model, x_val, y_val, cfg.eps, cfg.val_pgd_steps, clip,
                                              max(cfg.batch_size, 256), cfg.seed)
        rec = EpochRecord(epoch=epoch + 1, lr_end=lr, train_loss=loss_sum / seen, train_adv_accuracy=correct / seen,
                          val_clean_accuracy=val_clean, val_pgd_accuracy=val_pgd,
                          seconds=time.perf_counter() - t0)
        result.history.append(rec)
        stop = False
        if val_pgd is None or val_pgd > best_pgd:  # no validation: every epoch is the latest best
            if val_pgd is not None:
                best_pgd = val_pgd
            result.best_epoch = epoch + 1
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif best_pgd - val_pgd > cfg.overfit_drop:
            stop = True
            obs.warn(f"epoch {epoch + 1}: validation PGD accuracy fell from {best_pgd:.3f} to {val_pgd:.3f} "
                     f"(catastrophic overfitting): stopping, keeping epoch {result.best_epoch}")
        _save_atomic({"digest": cfg.digest(), "config": dataclasses.asdict(cfg), "n": n, "source": source, "epoch": epoch + 1, "net": net.state_dict(),
                      "opt": opt.state_dict(), "best": best_state, "best_pgd": best_pgd,
                      "best_epoch": result.best_epoch, "history": [dataclasses.asdict(h) for h in result.history],
                      "rng": torch.get_rng_state(), "stopped": stop}, ckpt)
        obs.epoch_finished(rec)
        if stop:
            result.stopped_early = True
            break
    net.load_state_dict(best_state)
    net.eval()
    for p in params:
        p.requires_grad_(False)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated"
            torch.jit.save(net, str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    return result


def _source_digest(weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> str:
    """What a run starts from, beyond its settings: the network's starting weights and the training
    images and labels (a checkpoint of another model or data set of the same size must not resume)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def _differences(state: dict[str, Any], cfg: FastAtConfig, n: int) -> str:
    """`` (epochs 5 there, 3 here; ...)``: what a checkpoint's run had otherwise, when it says."""
    theirs = state.get("config")
    diffs = [f"{key} {theirs[key]} there, {value} here" for key, value in dataclasses.asdict(cfg).items()
             if isinstance(theirs, dict) and key in theirs and theirs[key] != value]
    if state.get("n") is not None and state.get("n") != n:
        diffs.append(f"{state['n']} training images there, {n} here")
    return f" ({'; '.join(diffs)})" if diffs else ""


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint is a user-fixable problem
        raise ConfigError(f"cannot read checkpoint {path} ({type(exc).__name__}): delete it or pass --restart") from None
    if not isinstance(state, dict) or "net" not in state:
        raise ConfigError(f"{path} is not a robaudit training checkpoint: delete it or pass --restart")
    return state
