"""The ``detect`` jobs (fit, score, eval): inputs -> costs -> detector -> report (plain dicts).

The engine never touches the terminal: progress and warnings go through an :class:`Observer`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from robaudit.attacks.base import Norm, params_from_overrides
from robaudit.attacks.registry import AttackName, get_attack_class
from robaudit.data import load_dataset
from robaudit.demo_assets import resolve_data
from robaudit.detect.costs import CostResult, default_cost_params, measure_costs
from robaudit.detect.detectors import EnsembleDetector, KNNDetector, ThresholdDetector, ZScoreDetector, fit_warnings
from robaudit.detect.interface import SQUEEZE_FEATURE, CostName, CostParams, Detector, DetectorKind, DetectorMismatch
from robaudit.detect.metrics import auroc, rates
from robaudit.detect.squeeze import SqueezeParams, squeeze_scores
from robaudit.detect.store import DetectorFile, load_detector_file
from robaudit.engine.evaluation import EvaluationSet, build_evaluation_set
from robaudit.engine.observer import NullObserver, Observer
from robaudit.engine.session import InputOptions, load_inputs, seed_everything
from robaudit.errors import ConfigError, DataLoadError
from robaudit.models import Classifier
from robaudit.report.build import provenance

SCHEMA_VERSION = "1.0"
KIND = "detect"


CRAFT_MODES = ("early", "full")
"""``early``: stop crafting each input as soon as it is adversarial (A2D's "BIM-A"; FGSM uses the
smallest eps of a grid that succeeds); ``full``: spend the whole budget (lands deeper)."""


@dataclass(frozen=True)
class DetectCommon:
    inputs: InputOptions
    n: int | None = None
    seed: int = 0
    batch_size: int = 128
    costs: tuple[CostName, ...] | None = None
    """Cost attacks to run; ``None``: the default (:data:`DEFAULT_COSTS`), and not given by the user
    (``detect eval --detector`` refuses a given one: the file names its own)."""
    max_iter: int | None = None
    """Override of every cost attack's ``max_iter``."""

    @property
    def cost_names(self) -> tuple[CostName, ...]:
        return DEFAULT_COSTS if self.costs is None else self.costs


DEFAULT_COSTS = (CostName.BIM_LINF,)


def _check_common(c: DetectCommon) -> None:
    if c.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {c.batch_size}")
    if c.n is not None and c.n < 1:
        raise ConfigError(f"-n must be >= 1, got {c.n}")
    if c.max_iter is not None and c.max_iter < 1:
        raise ConfigError(f"--max-iter must be >= 1, got {c.max_iter}")


def cost_params_for(model: Classifier, costs: Sequence[CostName], max_iter: int | None = None) -> list[CostParams]:
    return [default_cost_params(c, model.info.input_shape, model.clip, max_iter) for c in costs]


def default_craft_eps(model: Classifier) -> float:
    """Linf budget for crafting FGSM/BIM: 0.3 on one-channel (MNIST-like) inputs, 8/255 otherwise."""
    span = model.clip[1] - model.clip[0]
    return (0.3 if model.info.input_shape[0] == 1 else 8 / 255) * span


@dataclass
class Crafted:
    """Successful adversarial examples of one attack and where they came from."""

    x: torch.Tensor
    source_index: np.ndarray
    """Index into the benign evaluation set of each adversarial example."""
    n_attempted: int
    l2: np.ndarray
    linf: np.ndarray
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    """How they were crafted: the attack, its norm and eps, and its parameters (for the report)."""


def craft(model: Classifier, x: torch.Tensor, y: torch.Tensor, attack: AttackName, *, mode: str = "early",
          eps: float | None = None, seed: int = 0, batch_size: int = 128,
          params: dict[str, Any] | None = None) -> Crafted:
    """Craft untargeted adversarial examples with ``attack`` (default parameters, FGSM/BIM at ``eps``)
    and keep the successful ones."""
    if mode not in CRAFT_MODES:
        raise ConfigError(f"craft mode must be one of {', '.join(CRAFT_MODES)}, got {mode!r}")
    cls = get_attack_class(attack, "torch")
    eps = default_craft_eps(model) if eps is None else eps
    start = time.perf_counter()
    p = dict(params or {})
    if attack is AttackName.FGSM and mode == "early":
        x_adv = _fgsm_min_eps(model, x, y, eps, batch_size)
        settings: dict[str, Any] = {"attack": attack.value, "norm": "linf", "eps_max": eps,
                                    "rule": "the smallest of 30 evenly spaced eps up to eps_max that flips the input"}
    else:
        if attack is AttackName.BIM:
            p.setdefault("early_stop", mode == "early")
            p.setdefault("steps", 100)
            p.setdefault("rel_stepsize", 0.02 if mode == "early" else 0.025)
        prm = params_from_overrides(cls.Params, p) if p else cls.Params()  # CLI strings or profile values
        kwargs: dict[str, Any] = {}
        if attack in (AttackName.FGSM, AttackName.BIM, AttackName.PGD, AttackName.APGD):
            kwargs = {"norm": Norm.LINF, "eps": eps}
        x_adv = cls(prm, **kwargs).generate(model, x, y, clip=model.clip, batch_size=batch_size, seed=seed).x_adv
        settings = {"attack": attack.value, **({"norm": "linf", "eps": eps} if kwargs else {}),
                    "params": dataclasses.asdict(prm)}
    seconds = time.perf_counter() - start
    pred = model.predict(x_adv, batch_size=batch_size).argmax(1)
    ok = (pred != y).nonzero().flatten()
    delta = (x_adv - x)[ok].flatten(1)
    return Crafted(x_adv[ok], ok.numpy(), int(x.shape[0]), delta.norm(dim=1).numpy().astype(np.float64),
                   delta.abs().amax(dim=1).numpy().astype(np.float64) if len(ok) else np.zeros(0), seconds,
                   settings)


def _fgsm_min_eps(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int,
                  grid: int = 30) -> torch.Tensor:
    """FGSM at the smallest of ``grid`` evenly spaced eps up to ``eps`` that fools the model (per input)."""
    from robaudit.attacks.fgsm import FGSM

    x_adv = x.clone()
    todo = torch.arange(x.shape[0])
    for e in np.linspace(eps / grid, eps, grid):
        if todo.numel() == 0:
            break
        cand = FGSM(norm=Norm.LINF, eps=float(e)).generate(model, x[todo], y[todo], clip=model.clip,
                                                            batch_size=batch_size).x_adv
        ok = model.predict(cand, batch_size=batch_size).argmax(1) != y[todo]
        x_adv[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return x_adv


def features_for(model: Classifier, x: torch.Tensor, costs: Sequence[CostParams], squeeze: SqueezeParams | None,
                 *, batch_size: int, seed: int,
                 indices: Sequence[int] | np.ndarray | None = None) -> tuple[dict[str, np.ndarray], CostResult, float]:
    """Cost features (and the squeeze score when asked) of ``x``; returns the seconds spent in total.
    ``indices``: the inputs' dataset indices (keys of their random streams; ``None``: their content)."""
    start = time.perf_counter()
    res = measure_costs(model, x, costs, clip=model.clip, batch_size=batch_size, seed=seed, indices=indices)
    feats = res.features()
    if squeeze is not None:
        feats[SQUEEZE_FEATURE] = squeeze_scores(model, x, squeeze, clip=model.clip, batch_size=batch_size)
    return feats, res, time.perf_counter() - start


@dataclass
class AdversarialInputs:
    """The adversarial training inputs of a k-NN detector read from a file, after dropping the ones
    that are not adversarial to the model."""

    x: torch.Tensor
    source_index: np.ndarray | None
    """Dataset index (in ``--data``) of the benign input each example was made from, when the file says."""
    info: dict[str, Any]
    """What was read and dropped (for the detector file's ``fit.adversarial``)."""
    warnings: list[str]


def _npz_members(path: str) -> list[str] | None:
    """Array names of an ``.npz`` (``None`` for other data, or a file numpy cannot list)."""
    if not str(path).lower().endswith(".npz"):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z.files)
    except (OSError, ValueError, EOFError):
        return None  # load_dataset says what is wrong with it


def _read_array(path: str, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z[key])
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise DataLoadError(f"cannot read array {key!r} of {path}: {exc}") from None


def _load_adversarial(opts: InputOptions, path: str, model: Classifier, n: int | None, seed: int,
                      data: Any, batch_size: int) -> AdversarialInputs:
    """Adversarial inputs from ``path``, keeping only those the model misclassifies.

    A file of ``attack --save-adv`` (``adv_<cell>`` arrays beside the clean ``x``/``y``) gives every
    cell's examples (or the one ``--x-key adv_<cell>`` names), with their ``success_<cell>`` masks and
    source ``index``; other data is read as ``--data`` is (``--x-key``/``--y-key``), with an optional
    ``index`` array of source positions in ``--data`` (and a ``success_<name>`` mask for an image
    array ``adv_<name>``). ``-n`` samples from what was read. An example is dropped when its mask says
    the attack failed, or when it has a label and the model's prediction equals it."""
    from robaudit.data import select

    resolved = resolve_data(path)
    members = _npz_members(resolved)
    adv_keys = sorted(k for k in members or [] if k.startswith("adv_"))
    if members is not None and opts.x_key is not None:
        image_keys: list[str | None] = [opts.x_key]
    elif adv_keys:
        image_keys = list(adv_keys)  # an `attack --save-adv` file: every cell's examples
    else:
        image_keys = [None]

    def load(x_key: str | None, y_key: str | None, labelled: bool) -> Any:
        return load_dataset(resolved, layout=opts.layout, channels=model.info.input_shape[0], x_key=x_key,
                            y_key=y_key, input_range=model.clip, labels_optional=not labelled)

    xs, ys, masks, sources, labelled_rows = [], [], [], [], []
    index = _read_array(resolved, "index").astype(np.int64).ravel() if members and "index" in members else None
    first = None
    for key in image_keys:
        y_key = opts.y_key if opts.y_key is not None or key is None else ("y" if "y" in (members or []) else None)
        try:
            ds, has_labels = load(key, y_key, True), True
        except DataLoadError:
            if opts.y_key is not None:
                raise
            ds, has_labels = load(key, None, False), False  # unlabelled: nothing to check the predictions against
        if tuple(ds.x.shape[1:]) != tuple(model.info.input_shape):
            raise DataLoadError(f"adversarial inputs {path}{f' ({key})' if key else ''} have shape "
                                f"{tuple(ds.x.shape[1:])}, the model expects {tuple(model.info.input_shape)}")
        rows = int(ds.x.shape[0])
        first = first if first is not None else ds
        xs.append(ds.x)
        ys.append(ds.y if has_labels else np.full(rows, -1, np.int64))
        labelled_rows.append(np.full(rows, has_labels))
        mask_key = f"success_{key[4:]}" if key and key.startswith("adv_") else None
        if mask_key and mask_key in (members or []):
            m = _read_array(resolved, mask_key).astype(bool).ravel()
            if m.size != rows:
                raise DataLoadError(f"{path}: {mask_key} has {m.size} entries for {rows} inputs in {key}")
            masks.append(m)
        else:
            masks.append(np.ones(rows, bool))
        sources.append(index if index is not None and index.size == rows else np.full(rows, -1, np.int64))
    assert first is not None
    x_all = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y_all, ok_mask, src = np.concatenate(ys), np.concatenate(masks), np.concatenate(sources)
    labelled = np.concatenate(labelled_rows)
    pick = select(dataclasses.replace(first, x=x_all, y=np.maximum(y_all, 0)), n, seed)
    x = torch.from_numpy(np.ascontiguousarray(x_all[pick]))
    y, ok_mask, src, labelled = y_all[pick], ok_mask[pick], src[pick], labelled[pick]
    n_read = int(pick.size)
    logits = model.predict(x, batch_size=batch_size)
    pred = logits.argmax(1).numpy()
    finite = torch.isfinite(logits).all(dim=1).numpy()
    correct = labelled & (pred == y)
    keep = ok_mask & finite & ~correct
    where = f"{path}" + (f" ({', '.join(k for k in image_keys if k)})" if any(image_keys) else "")
    n_failed, n_correct = int((~ok_mask).sum()), int((ok_mask & finite & correct).sum())
    n_nonfinite = int((ok_mask & ~finite).sum())
    reasons = ([f"{n_failed} marked unsuccessful by their success_ mask"] if n_failed else []) + \
              ([f"{n_correct} classified as their label by the model (not adversarial to it)"] if n_correct else []) + \
              ([f"{n_nonfinite} with NaN/inf logits"] if n_nonfinite else [])
    if not keep.any():
        raise ConfigError(f"none of the {n_read} inputs of {where} is adversarial to this model "
                          f"({'; '.join(reasons) or 'nothing to read'}): nothing to train the k-NN detector on")
    warnings = []
    if reasons:
        warnings.append(f"{n_read - int(keep.sum())} of the {n_read} adversarial training inputs of {where} were "
                        f"dropped: {'; '.join(reasons)}; the k-NN detector is trained on the other {int(keep.sum())}")
    if not labelled[keep].all():
        warnings.append(f"{int((~labelled[keep]).sum())} adversarial training inputs of {where} have no labels: "
                        "they are used without checking that the model misclassifies them (give --y-key)")
    src = src[keep]
    known = src >= 0
    info: dict[str, Any] = {"file": path, "arrays": [k for k in image_keys if k], "n_read": n_read,
                            "n_dropped": n_read - int(keep.sum()),
                            "dropped": {"unsuccessful": n_failed, "correctly_classified": n_correct,
                                        "nonfinite": n_nonfinite}}
    source_index = None
    if known.any():
        if known.all() and _sources_match(resolved, members or [], index, data):
            source_index = src
        else:
            warnings.append(f"the source indices in {where} do not point at the --data inputs (its clean images "
                            "differ, or some are missing): a later `detect eval --detector` cannot leave out "
                            "examples of the same sources")
    return AdversarialInputs(x[torch.from_numpy(keep)].contiguous(), source_index, info, warnings)


def _sources_match(path: str, members: Sequence[str], index: np.ndarray | None, data: Any) -> bool:
    """Whether ``index`` are positions in ``data``: in range, and where the file has its clean inputs
    (``x`` of ``attack --save-adv``), those equal ``data`` there."""
    if index is None or index.size == 0 or index.min() < 0 or index.max() >= len(data.x):
        return False
    if "x" not in members:
        return True  # no clean inputs to check against: read as positions in --data, as documented
    clean = _read_array(path, "x")
    if clean.shape != (index.size, *data.x.shape[1:]):
        return False
    return bool(np.allclose(clean.astype(np.float32), data.x[index], atol=1e-6))


# --------------------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class FitJob:
    common: DetectCommon
    detector: DetectorKind = DetectorKind.ZSCORE
    adversarial: str | None = None
    """An .npz of adversarial inputs (k-NN only)."""
    attacks: tuple[AttackName, ...] = ()
    """Attacks to craft adversarial training inputs with (k-NN only, when no ``adversarial``)."""
    craft_mode: str = "early"
    fpr: float = 0.05
    """Target false-positive rate of the thresholds (the ensemble splits it over its members)."""
    knn_k: int = 5
    ensemble_k: int = 1
    squeeze: bool = False
    """Add the feature-squeezing detector (ensemble, or alone with ``detector=squeeze``)."""


def run_fit_job(job: FitJob, command: list[str], observer: Observer | None = None) -> tuple[DetectorFile, dict[str, Any]]:
    obs = observer or NullObserver()
    c = job.common
    _check_common(c)
    names = c.cost_names
    if job.detector is DetectorKind.ZSCORE and len(names) > 1:  # refused before any cost is computed
        raise ConfigError(f"the z-score detector uses one cost attack, got {len(names)} "
                          f"({', '.join(k.value for k in names)}); give one --cost, or --detector ensemble "
                          "to combine them")
    if job.craft_mode not in CRAFT_MODES:
        raise ConfigError(f"--craft must be one of {', '.join(CRAFT_MODES)}, got {job.craft_mode!r}")
    if job.squeeze and job.detector in (DetectorKind.ZSCORE, DetectorKind.KNN):
        raise ConfigError(f"--squeeze adds feature squeezing to --detector ensemble (or use --detector squeeze); "
                          f"the {job.detector.value} detector does not use it")
    seed_everything(c.seed)
    inputs = load_inputs(c.inputs)
    model = inputs.model
    evalset = build_evaluation_set(model, inputs.data, c.n, c.seed, c.batch_size)
    costs = cost_params_for(model, names, c.max_iter)
    use_squeeze = job.squeeze or job.detector is DetectorKind.SQUEEZE
    sq = SqueezeParams.default_for(model.info.input_shape) if use_squeeze else None
    obs.cell_started(f"costs of {evalset.n} benign inputs")
    benign, res, _ = features_for(model, evalset.x, costs, sq, batch_size=c.batch_size, seed=c.seed,
                                  indices=evalset.indices)
    fit: dict[str, Any] = {"data": inputs.data_spec, "data_sha256": inputs.data.sha256, "n": evalset.n,
                           "seed": c.seed, "target_fpr": job.fpr, "command": command,
                           "indices": [int(i) for i in evalset.indices]}
    det: Detector
    adv_warnings: list[str] = []  # what reading --adversarial dropped
    if job.detector is DetectorKind.ZSCORE:
        det = ZScoreDetector.fit(names[0].value, benign[names[0].value], job.fpr)
    elif job.detector is DetectorKind.SQUEEZE:
        costs = []
        det = ThresholdDetector.fit(benign[SQUEEZE_FEATURE], job.fpr)
    elif job.detector is DetectorKind.ENSEMBLE:
        n_members = len(costs) + (1 if sq else 0)
        member_fpr = job.fpr / n_members if job.ensemble_k == 1 else job.fpr
        members: list[Detector] = [ZScoreDetector.fit(p.name.value, benign[p.name.value], member_fpr) for p in costs]
        if sq:
            members.append(ThresholdDetector.fit(benign[SQUEEZE_FEATURE], member_fpr))
        det = EnsembleDetector(members, job.ensemble_k)
    elif job.detector is DetectorKind.KNN:
        if job.adversarial:
            loaded = _load_adversarial(c.inputs, job.adversarial, model, c.n, c.seed, inputs.data, c.batch_size)
            x_adv, adv_warnings = loaded.x, loaded.warnings
            fit["adversarial"] = dict(loaded.info)
            if loaded.source_index is not None:  # `detect eval --detector` leaves these sources out
                fit["adversarial"]["indices"] = sorted({int(i) for i in loaded.source_index})
                fit["adversarial"]["data_sha256"] = inputs.data.sha256
        elif job.attacks:
            parts = []
            for a in job.attacks:
                obs.cell_started(f"crafting {a.value}")
                parts.append(craft(model, evalset.x, evalset.y, a, mode=job.craft_mode, seed=c.seed,
                                   batch_size=c.batch_size).x)
            x_adv = torch.cat(parts)
            fit["adversarial"] = {"attacks": [a.value for a in job.attacks], "craft_mode": job.craft_mode}
        else:
            raise ConfigError("the k-NN detector needs adversarial training inputs: pass --adversarial ADV.npz "
                              "or --attack NAMES to craft them")
        if x_adv.shape[0] == 0:
            raise ConfigError("no adversarial training inputs (every crafting attack failed)")
        obs.cell_started(f"costs of {x_adv.shape[0]} adversarial inputs")
        adv, _, _ = features_for(model, x_adv, costs, sq, batch_size=c.batch_size, seed=c.seed)
        fit["adversarial"]["n"] = int(x_adv.shape[0])
        det = KNNDetector.fit([p.name.value for p in costs], benign, adv, job.knn_k)
        fit["fit_tpr"] = float(det.flag(adv).mean())  # of its own adversarial training inputs
    else:  # pragma: no cover - the enum is exhaustive
        raise ConfigError(f"unknown detector {job.detector}")
    fit["fit_fpr"] = float(det.flag(benign).mean())
    fit["benign_costs"] = {k: _stats(v) for k, v in res.costs.items()}
    fit["warnings"] = list(dict.fromkeys(fit_warnings(det) + adv_warnings))
    dfile = DetectorFile(model_sha256=model.info.sha256, costs=costs, detector=det, clip=model.clip,
                         input_shape=tuple(model.info.input_shape), squeeze=sq, model_path=inputs.model_spec, fit=fit)
    summary = {"schema_version": SCHEMA_VERSION, "kind": KIND, "command": "fit",
               "model": inputs.model_section(), "detector": det.to_dict()["kind"],
               "n_benign": evalset.n, "fit": fit}
    return dfile, summary


def _per_input(index: np.ndarray, held_out: np.ndarray, features: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per input: its dataset ``index``, whether it counts in the rates (``held_out``), and
    its features (attack costs in iterations, the squeeze score): enough to recompute every AUROC
    and rate, or to plot the cost distributions."""
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in features.items()}
    return [{"index": int(index[i]), "held_out": bool(held_out[i]),
             **{k: (float(v[i]) if np.isfinite(v[i]) else None) for k, v in cols.items()}}
            for i in range(len(index))]


def _stats(v: np.ndarray) -> dict[str, float]:
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    # the sample std (ddof 1), as the z-score detector uses it
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()),
            "median": float(np.median(v)), "max": float(v.max())}


# ------------------------------------------------------------------------------------- score


@dataclass(frozen=True)
class ScoreJob:
    common: DetectCommon
    detector_path: str = "detector.json"


def run_score_job(job: ScoreJob, command: list[str], observer: Observer | None = None) -> dict[str, Any]:
    c = job.common
    _check_common(c)
    seed_everything(c.seed)
    dfile = load_detector_file(job.detector_path)
    inputs = load_inputs(c.inputs)
    model = inputs.model
    dfile.check_model(model.info.sha256, inputs.model_spec)
    if dfile.input_shape and tuple(dfile.input_shape) != tuple(model.info.input_shape):
        raise DetectorMismatch(f"the detector expects inputs {tuple(dfile.input_shape)}, "
                               f"the data has {tuple(model.info.input_shape)}")
    from robaudit.data import select

    idx = select(inputs.data, c.n, c.seed)
    x = torch.from_numpy(np.ascontiguousarray(inputs.data.x[idx]))
    feats, res, seconds = features_for(model, x, dfile.costs, dfile.squeeze, batch_size=c.batch_size, seed=c.seed,
                                       indices=idx)
    score = dfile.detector.score(feats)
    flags = dfile.detector.flag(feats)
    n = int(x.shape[0])
    rows = [{"index": int(idx[i]), "prediction": int(res.predictions[i]),
             **{k: float(v[i]) for k, v in feats.items()}, "score": float(score[i]), "adversarial": bool(flags[i])}
            for i in range(n)]
    fwd = sum(res.forward_passes.values())
    bwd = sum(res.backward_passes.values())
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "command": command, "mode": "score",
            **provenance(model.device), "seed": c.seed,
            "model": inputs.model_section(), "data": {"path": inputs.data_spec, "sha256": inputs.data.sha256, "n": n},
            "detector": {"path": job.detector_path, "kind": dfile.detector.to_dict()["kind"],
                         "costs": [p.to_dict() for p in dfile.costs]},
            "summary": {"n": n, "flagged": int(flags.sum()), "flagged_rate": float(flags.mean()) if n else None},
            "latency": {"seconds_per_input": seconds / n if n else None, "forward_passes_per_input": fwd / n if n else None,
                        "backward_passes_per_input": bwd / n if n else None},
            "inputs": rows}


# -------------------------------------------------------------------------------------- eval


def _fit_overlap(fit: dict[str, Any], data_spec: str, data_sha256: str, evalset: EvaluationSet,
                 seed: int) -> tuple[np.ndarray, list[str]]:
    """Which evaluation inputs a detector file was fitted on (a mask), and a warning about them.
    Scored again, they would give its fit-time false-positive rate (and, for k-NN, its training
    detection rate) as if measured on new inputs. For k-NN, the benign sources of its adversarial
    training examples (``fit.adversarial.indices``, from an ``--adversarial`` file's ``index``)
    count too: an example eval crafts from one of them would sit next to a training example."""
    same_data = fit.get("data_sha256") == data_sha256 if fit.get("data_sha256") else fit.get("data") == data_spec
    adv = fit.get("adversarial") if isinstance(fit.get("adversarial"), dict) else {}
    sources = (np.asarray(adv.get("indices") or [], dtype=np.int64)
               if adv.get("indices") and adv.get("data_sha256") == data_sha256 else np.zeros(0, np.int64))
    if not same_data and not sources.size:
        return np.zeros(evalset.n, bool), []
    idx = np.asarray(evalset.indices)
    if same_data and "indices" not in fit:  # a file from before fit inputs were recorded: same data and seed overlap
        if fit.get("seed") == seed:
            return np.zeros(evalset.n, bool), [
                "the detector was fitted on this data with the same --seed, so these inputs are probably the ones "
                "it was fitted on and its rates are in-sample; refit it with this version (which records them) or "
                "evaluate with another --seed"]
        return np.zeros(evalset.n, bool), []
    fitted = np.isin(idx, np.asarray(fit["indices"], dtype=np.int64)) if same_data else np.zeros(evalset.n, bool)
    mask = fitted | np.isin(idx, sources)
    if not mask.any():
        return mask, []
    if mask.all():
        raise ConfigError(f"all {evalset.n} inputs of this evaluation are ones the detector was fitted on (same data, "
                          "--seed and -n) or sources of its adversarial training examples, so its rates would be "
                          "in-sample: evaluate on other inputs (another --seed, a larger -n, or other data)")
    n_src = int((mask & ~fitted).sum())
    also = (f" ({n_src} of them as the sources of its adversarial training examples)" if n_src else "")
    return mask, [f"{int(mask.sum())} of the {evalset.n} benign inputs are ones the detector was fitted on{also}: they, "
                  "and the adversarial examples crafted from them, are left out of the detector's AUROC and rates (its "
                  "column and `detection`); the AUROCs of the single costs use every input"]


def _misclassified_benign(model: Classifier, data: Any, evalset: EvaluationSet, c: DetectCommon,
                          costs: Sequence[CostParams], sq: SqueezeParams | None,
                          detectors: dict[str, Detector]) -> dict[str, Any]:
    """The sampled benign inputs the model gets wrong (left out of the evaluation set, so of the FPR):
    a deployed detector sees them too. Their count, each detector's flag rate on them (``None`` when
    there are none) and their costs. Inputs with NaN/inf logits are not scored."""
    idx = evalset.misclassified_indices
    out: dict[str, Any] = {"n_misclassified": 0, "flag_rate_misclassified": None}
    if idx.size == 0:
        return out
    x = torch.from_numpy(np.ascontiguousarray(data.x[idx]))
    feats, _, _ = features_for(model, x, costs, sq, batch_size=c.batch_size, seed=c.seed, indices=idx)
    out["n_misclassified"] = int(idx.size)
    out["flag_rate_misclassified"] = {name: float(det.flag(feats).mean()) for name, det in detectors.items()}
    out["misclassified_inputs"] = _per_input(idx, np.zeros(idx.size, bool), feats)
    return out


@dataclass(frozen=True)
class EvalJob:
    common: DetectCommon
    attacks: tuple[AttackName, ...] = (AttackName.FGSM, AttackName.BIM, AttackName.JSMA, AttackName.CW_L2,
                                       AttackName.DEEPFOOL)
    craft_mode: str = "early"
    fpr: float | None = None
    """Target false-positive rate of the thresholds fitted here (``None``: 0.05); not with ``detector_path``,
    whose thresholds were fitted for the rate in its file."""
    detector_path: str | None = None
    """Use this detector's thresholds; otherwise z-score thresholds are fitted on half the benign inputs."""
    squeeze: bool = False
    attack_params: dict[AttackName, dict[str, Any]] = field(default_factory=dict)


def run_eval_job(job: EvalJob, command: list[str], observer: Observer | None = None) -> dict[str, Any]:
    obs = observer or NullObserver()
    c = job.common
    _check_common(c)
    seed_everything(c.seed)
    inputs = load_inputs(c.inputs)
    model = inputs.model
    evalset: EvaluationSet = build_evaluation_set(model, inputs.data, c.n, c.seed, c.batch_size)
    dfile = None
    warnings: list[str] = []
    in_fit = np.zeros(evalset.n, bool)  # inputs the given detector was fitted on: left out of its rates
    if job.detector_path:
        if job.fpr is not None:
            raise ConfigError("--fpr sets the thresholds that eval fits itself; a --detector file keeps the ones it "
                              "was fitted with (refit it with `detect fit --fpr`)")
        for given, what in ((c.costs is not None, "--cost"), (c.max_iter is not None, "--max-iter")):
            if given:
                raise ConfigError(f"{what} sets the cost attacks that eval runs for its own thresholds; a --detector "
                                  f"file runs the ones it was fitted with (refit it with `detect fit {what}`)")
        dfile = load_detector_file(job.detector_path)
        dfile.check_model(model.info.sha256, inputs.model_spec)
        costs = dfile.costs
        in_fit, note = _fit_overlap(dfile.fit, inputs.data_spec, inputs.data.sha256, evalset, c.seed)
        warnings += note
        target_fpr = dfile.fit.get("target_fpr") if dfile.detector.kind is not DetectorKind.KNN else None
    else:
        costs = cost_params_for(model, c.cost_names, c.max_iter)
        target_fpr = 0.05 if job.fpr is None else job.fpr
        if int((np.arange(evalset.n) % 2 == 0).sum()) < 2:
            raise ConfigError(f"detect eval fits its thresholds on the even-indexed half of the correctly classified "
                              f"inputs and needs at least 2 there, but only {evalset.n} are correctly classified: "
                              "give a larger -n")
    sq = (dfile.squeeze if dfile else None) or (SqueezeParams.default_for(model.info.input_shape) if job.squeeze else None)
    obs.plan_started(1 + 2 * len(job.attacks))
    obs.cell_started(f"costs of {evalset.n} benign inputs")
    benign, bres, bsec = features_for(model, evalset.x, costs, sq, batch_size=c.batch_size, seed=c.seed,
                                      indices=evalset.indices)
    obs.cell_finished("benign", {})
    # thresholds: the given detector, or z-score per cost fitted on the first half of the benign inputs
    half = np.arange(evalset.n) % 2 == 0
    test = ~half if dfile is None else ~in_fit
    detectors: dict[str, Detector] = {}
    if dfile is not None:
        detectors["detector"] = dfile.detector
    else:
        assert target_fpr is not None
        for p in costs:
            detectors[p.name.value] = ZScoreDetector.fit(p.name.value, benign[p.name.value][half], target_fpr)
        if sq is not None:
            detectors[SQUEEZE_FEATURE] = ThresholdDetector.fit(benign[SQUEEZE_FEATURE][half], target_fpr)
            for p in costs:
                members = [ZScoreDetector.fit(p.name.value, benign[p.name.value][half], target_fpr / 2),
                           ThresholdDetector.fit(benign[SQUEEZE_FEATURE][half], target_fpr / 2)]
                detectors[f"{p.name.value}+squeeze"] = EnsembleDetector(members, 1)
    warnings += list(dict.fromkeys(w for d in detectors.values() for w in fit_warnings(d)))
    from robaudit.engine.detect_cell import small_test_warning

    warnings += small_test_warning(int(test.sum()))
    bsub = {k: v[test] for k, v in benign.items()}
    misclassified = _misclassified_benign(model, inputs.data, evalset, c, costs, sq, detectors)
    feature_names = [p.name.value for p in costs] + ([SQUEEZE_FEATURE] if sq else [])
    auroc_table: dict[str, dict[str, float]] = {}
    detection: dict[str, dict[str, dict[str, float]]] = {}
    attacks_out: dict[str, Any] = {}
    latency: dict[str, dict[str, float]] = {}
    n_all = evalset.n
    for name, sec in bres.seconds.items():
        latency[name] = {"benign_seconds_per_input": sec / n_all, "benign_forward_per_input": bres.forward_passes[name] / n_all,
                         "benign_backward_per_input": bres.backward_passes[name] / n_all}
    for a in job.attacks:
        obs.cell_started(f"crafting {a.value}")
        cr = craft(model, evalset.x, evalset.y, a, mode=job.craft_mode, seed=c.seed, batch_size=c.batch_size,
                   params=job.attack_params.get(a))
        obs.cell_finished(f"crafting {a.value}", {})
        entry: dict[str, Any] = {"n_attempted": cr.n_attempted, "n_adversarial": int(cr.x.shape[0]),
                                 "success_rate": cr.x.shape[0] / max(cr.n_attempted, 1),
                                 "craft_mode": job.craft_mode if a in (AttackName.FGSM, AttackName.BIM) else "native",
                                 "mean_l2": float(cr.l2.mean()) if cr.l2.size else None,
                                 "mean_linf": float(cr.linf.mean()) if cr.linf.size else None,
                                 "settings": cr.settings}
        if cr.x.shape[0] == 0:
            warnings.append(f"{a.value} produced no adversarial example: no AUROC for it")
            attacks_out[a.value] = entry
            obs.cell_finished(a.value, {})
            continue
        obs.cell_started(f"costs of {cr.x.shape[0]} {a.value} inputs")
        adv, ares, _ = features_for(model, cr.x, costs, sq, batch_size=c.batch_size, seed=c.seed)
        obs.cell_finished(a.value, {})
        a_test = ~in_fit[cr.source_index]  # examples crafted from the detector's own fit inputs are left out
        entry["costs"] = {k: _stats(v) for k, v in ares.costs.items()}
        n_adv = int(cr.x.shape[0])
        for name, sec in ares.seconds.items():
            latency[name].setdefault("adversarial_seconds_per_input", {})[a.value] = sec / n_adv  # type: ignore[index]
        auroc_table[a.value] = {}
        for f in feature_names:
            sign = 1.0 if f == SQUEEZE_FEATURE else -1.0  # cheap cost = suspicious
            auroc_table[a.value][f] = auroc(sign * benign[f], sign * adv[f])
        adv_test = {k: v[a_test] for k, v in adv.items()}
        for dname, det in detectors.items():
            if dname not in auroc_table[a.value]:  # per-cost z-scores are monotone in the cost: same AUROC
                # a score that depends on fitted thresholds (a given detector, an A2D+squeeze ensemble,
                # whose members' margins and votes come from them) is judged on held-out benign inputs only
                auroc_table[a.value][dname] = (auroc(det.score(bsub), det.score(adv_test))
                                               if a_test.any() else None)
        detection[a.value] = {dname: rates(det.flag(bsub), det.flag(adv_test)) for dname, det in detectors.items()}
        entry["n_adversarial_test"] = int(a_test.sum())
        entry["inputs"] = _per_input(np.asarray(evalset.indices)[cr.source_index], a_test, adv)
        attacks_out[a.value] = entry
    data_dict = {"path": inputs.data_spec, "sha256": inputs.data.sha256, "n_selected": evalset.n_selected,
                 "n_evaluated": evalset.n, "clean_accuracy": evalset.clean_accuracy}
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "mode": "eval", "command": command,
            **provenance(model.device),
            "model": inputs.model_section(), "data": data_dict,
            "config": {"costs": [p.to_dict() for p in costs], "attacks": [a.value for a in job.attacks],
                       "craft_mode": job.craft_mode, "target_fpr": target_fpr, "seed": c.seed, "n": c.n,
                       "batch_size": c.batch_size, "squeeze": sq.to_dict() if sq else None,
                       "thresholds_from": job.detector_path or "z-score fitted on the even-indexed half of the benign inputs"},
            "benign": {"n": evalset.n, "n_test": int(test.sum()),
                       "costs": {k: _stats(v) for k, v in bres.costs.items()},
                       "squeeze": _stats(benign[SQUEEZE_FEATURE]) if sq else None,
                       "inputs": _per_input(np.asarray(evalset.indices), test, benign),
                       **misclassified},
            "thresholds": {k: d.to_dict() for k, d in detectors.items()},
            "auroc": auroc_table, "detection": detection, "attacks": attacks_out, "latency": latency,
            "warnings": warnings}
