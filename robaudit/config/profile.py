"""Load and validate audit profiles (YAML through a SafeLoader that also refuses duplicate keys).

Every problem is a :class:`ConfigError` (exit 2) naming the file, the key and the reason, e.g.
``profiles/x.yaml: attacks.pgd.steps: must be >= 0, got -3``. Validation covers the whole
profile (unknown keys, unknown attack/target/defence names, impossible combinations,
out-of-range values, gate syntax) before anything is loaded or run.

Format (see the README section "Audits, profiles and gates" for a commented example)::

    name: quick                 # optional, defaults to the file name
    description: text
    seed: 0                     # sampling and per-cell attack seeds derive from it
    samples: 64                 # inputs sampled from the data (null: all of them)
    batch_size: 32              # also the journal granularity of long attacks
    examples: 4                 # adversarial examples kept per attack cell (HTML grid)
    backend: torch              # default backend for every attack
    attacks:                    # LABEL: {attack: NAME, eps, norm, backend, PARAM: VALUE...}
      pgd: {eps: 0.1, steps: 10}
      pgd-strong: {attack: pgd, eps: 0.3, steps: 40}
    targets: [untargeted]       # or all
    defences: [[]]              # stacks; [] is the undefended model; or {combinations_of: [ss, jpeg]}
    threat_models: [adaptive]   # adaptive (attack the defended model, BPDA/EOT), transfer, or both
    defence_params: {}          # {ss: {window: 3}, jpeg: {quality: 75}, tvm: {...}}
    eot_samples: 4              # draws averaged per gradient against randomised stacks (tvm)
    clever: null                # {inputs, batches, batch_size, radius, norm}; radius defaults per norm
    detect: null                # {costs, attacks, craft, squeeze, max_iter, samples, fpr}
    gates: ["pgd untargeted success_rate <= 0.3", "clean_accuracy >= 0.95"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robaudit.data.sampling import MAX_SEED
from robaudit.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
"""Where the shipped profiles live: ``robaudit/profiles``, a link to ``profiles/`` at the project
root in a checkout and a copy of it in an installed wheel."""

KNOWN_DEFENCES: dict[str, str] = {
    "ss": "spatial smoothing (median filter)",
    "jpeg": "JPEG compression",
    "tvm": "total variance minimisation",
}
"""Defence names a profile may use (each a preprocessor of :mod:`robaudit.defences`)."""

THREAT_MODELS = ("adaptive", "transfer")
"""``adaptive``: the attack runs against the defended model (BPDA through non-differentiable steps,
EOT over randomised ones); ``transfer``: examples crafted on the undefended model, then defended."""
DEFAULT_EOT_SAMPLES = 4
"""EOT draws per gradient against randomised stacks when a profile or ``defend eval`` does not say."""

DETECT_COSTS = ("bim-linf", "bim-l2", "jsma", "boundary")
DETECT_CRAFT = ("early", "full")
CLEVER_NORMS = ("l1", "l2", "linf")

_TOP_KEYS = ("name", "description", "seed", "samples", "batch_size", "examples", "backend", "attacks", "targets",
             "defences", "threat_models", "defence_params", "eot_samples", "clever", "detect", "gates")
_ATTACK_KEYS = ("attack", "eps", "norm", "backend")
_CLEVER_KEYS = {"inputs": int, "batches": int, "batch_size": int, "radius": float, "norm": str}
_DETECT_KEYS = {"costs": list, "attacks": list, "craft": str, "squeeze": bool, "max_iter": int, "samples": int,
                "fpr": float}
MAX_EXAMPLES = 64


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a profile, under its label (the key in ``attacks:``)."""

    label: str
    name: str
    """Registry name (``pgd``)."""
    eps: float | None = None
    norm: str | None = None
    backend: str = "torch"
    params: dict[str, Any] = field(default_factory=dict)
    """Attack parameter overrides, validated against the attack's ``Params``."""


@dataclass(frozen=True)
class CleverSpec:
    inputs: int = 100
    batches: int = 50
    batch_size: int = 10
    radius: float | None = None
    """Ball radius in pixel space; None: the norm's default (L1 10, L2 5, Linf 0.3) times the
    model's clip span, as ``robaudit clever``."""
    norm: str = "l2"


DEFAULT_DETECT_ATTACKS = ("fgsm", "bim", "jsma", "cw-l2", "deepfool")


@dataclass(frozen=True)
class DetectSpec:
    """The ``detect:`` section: one detection cell per model (A2D attack costs as the detector)."""

    costs: tuple[str, ...] = ("bim-linf",)
    attacks: tuple[AttackSpec, ...] = ()
    """Attacks that craft the adversarial examples to detect (untargeted, Linf; ``eps`` None: 0.3 on
    one-channel inputs, 8/255 otherwise). A list of names in YAML gives each its defaults."""
    craft: str = "early"
    squeeze: bool = False
    max_iter: int | None = None
    """Override of every cost attack's iteration cap."""
    samples: int | None = None
    """Benign inputs of the detection cell: the first ``samples`` of the evaluation set (None: all)."""
    fpr: float = 0.05
    """Target false-positive rate of the thresholds (fitted on the even-indexed half of the benign inputs)."""

    def feature_names(self) -> tuple[str, ...]:
        """Scores the detection cell reports, one AUROC row per (attack, feature)."""
        extra = ("squeeze", *(f"{c}+squeeze" for c in self.costs)) if self.squeeze else ()
        return (*self.costs, *extra)

    def selector_words(self) -> set[str]:
        """Words a detection gate may select rows with: attack labels and names, feature names."""
        return {a.label for a in self.attacks} | {a.name for a in self.attacks} | set(self.feature_names())


@dataclass(frozen=True)
class Profile:
    """A validated profile. ``digest`` identifies its content (journal fingerprint)."""

    name: str
    source: str
    description: str = ""
    seed: int = 0
    samples: int | None = 100
    batch_size: int = 64
    examples: int = 4
    attacks: tuple[AttackSpec, ...] = ()
    targets: tuple[str, ...] = ("untargeted",)
    defences: tuple[tuple[str, ...], ...] = ((),)
    threat_models: tuple[str, ...] = ("adaptive",)
    """Threat models under which defended stacks are attacked (the undefended stack runs once)."""
    defence_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-defence parameter overrides, validated against each preprocessor's ``Params``."""
    eot_samples: int = DEFAULT_EOT_SAMPLES
    """Expectation over transformation: draws averaged per gradient against a randomised stack
    (:data:`DEFAULT_EOT_SAMPLES`, the same as ``defend eval``'s, so a profile and the CLI give the
    same rows)."""
    clever: CleverSpec | None = None
    detect: DetectSpec | None = None
    gates: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)
    """Settings the profile gives that change nothing in this run (warned about, not refused: a
    shared profile may set them for stacks another run adds). Not part of the profile's content."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["notes"]
        d["attacks"] = [dataclasses.asdict(a) for a in self.attacks]
        d["defences"] = [list(s) for s in self.defences]
        if self.detect is not None:
            d["detect"]["attacks"] = [dataclasses.asdict(a) for a in self.detect.attacks]
        return d

    @property
    def digest(self) -> str:
        body = {k: v for k, v in self.to_dict().items() if k not in ("source", "description")}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def with_overrides(self, *, samples: int | None | str = "keep", seed: int | None = None,
                       batch_size: int | None = None) -> "Profile":
        """A copy with CLI overrides (``-n``, ``--seed``, ``--batch-size``) applied and checked."""
        changes: dict[str, Any] = {}
        if samples != "keep":
            if samples is not None and (not isinstance(samples, int) or samples < 1):
                raise ConfigError(f"-n must be >= 1, got {samples}")
            if samples is not None and self.clever is not None and self.clever.inputs > samples:
                # the profile's own check (clever.inputs <= samples), for the -n that replaces its samples
                raise ConfigError(f"-n {samples} is fewer than the profile's clever.inputs ({self.clever.inputs}): "
                                  "CLEVER would silently run on fewer inputs; raise -n or lower clever.inputs")
            changes["samples"] = samples
        if seed is not None:
            if not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"--seed must be from 0 to {MAX_SEED}, got {seed}")
            changes["seed"] = seed
        if batch_size is not None:
            if batch_size < 1:
                raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
            changes["batch_size"] = batch_size
        return dataclasses.replace(self, **changes)


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")) if PROFILES_DIR.is_dir() else []


def resolve_profile_path(spec: str) -> Path:
    """A path to a YAML file, or the name of a shipped profile (``quick``)."""
    p = Path(spec)
    if p.is_file():
        return p
    # a bare name is a shipped profile, even when the working folder has a folder of that name
    if p.suffix.lower() in (".yaml", ".yml") or "/" in spec or "\\" in spec:
        raise ConfigError(f"profile file {spec} " + ("is a folder, not a YAML file" if p.is_dir() else "does not exist"))
    shipped = PROFILES_DIR / f"{spec}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"unknown profile {spec!r}: not a file, and not a shipped profile "
                      f"(shipped: {', '.join(profile_names()) or 'none'})")


MAX_PROFILE_BYTES = 1 << 20
"""Profiles are a few lines of YAML; anything above this is refused before it is read."""


def load_profile(spec: str, clip_span: float | None = 1.0) -> Profile:
    """Read and validate a profile by name or path (``clip_span``: see :func:`parse_profile`)."""
    import yaml

    from robaudit.config.yaml_load import load_yaml

    path = resolve_profile_path(spec)
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a profile "
                              f"(limit {MAX_PROFILE_BYTES}); is this the right file?")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        raw = load_yaml(text)
    except (RecursionError, ValueError) as exc:  # absurd nesting; an integer too long to convert
        raise ConfigError(f"{path}: not a usable profile: {type(exc).__name__}: {exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        why = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, whatever PyYAML says
        raise ConfigError(f"{path}: not valid YAML{line}: {why}") from None
    _check_keys(raw, str(path), "")
    return parse_profile(raw, source=str(path), default_name=path.stem, clip_span=clip_span)


def _check_keys(value: Any, source: str, where: str) -> None:
    """Refuse mapping keys that are not strings anywhere in a profile (``&anchor: 1`` parses as a
    ``None`` key, ``1: x`` as an integer one), naming where they are. Iterative, with a depth limit
    and each container visited once (YAML aliases can nest a list inside itself)."""
    todo: list[tuple[Any, str, int]] = [(value, where, 0)]
    seen: set[int] = set()
    while todo:
        item, at, depth = todo.pop()
        if not isinstance(item, (dict, list)) or id(item) in seen:
            continue
        seen.add(id(item))
        if depth > MAX_PROFILE_DEPTH:
            raise ConfigError(f"{source}: {at or 'top level'}: nested more than {MAX_PROFILE_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{source}: {at or 'top level'}: keys must be names, got {key!r}")
                todo.append((sub, f"{at}.{key}" if at else key, depth + 1))
        else:
            todo.extend((sub, f"{at}[{i}]", depth + 1) for i, sub in enumerate(item))


MAX_PROFILE_DEPTH = 32
"""Deepest nesting a profile may have (the real format needs 4)."""


class _Ctx:
    def __init__(self, source: str, clip_span: float | None = 1.0) -> None:
        self.source = source
        self.clip_span = clip_span
        """Width of the model's input range: the largest Linf eps (``None``: not known here, unchecked)."""

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {reason}")


def _int(ctx: _Ctx, key: str, value: Any, lo: int, hi: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 1e2 (YAML reads exponents as floats) is the integer 100; 2.5 is refused
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.fail(key, f"must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ctx.fail(key, f"must be {rng}, got {value}")
    return value


def _num(ctx: _Ctx, key: str, value: Any, lo: float = 0.0, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ctx.fail(key, f"must be a finite number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo:g}" if hi is None else f"between {lo:g} and {hi:g}"
        raise ctx.fail(key, f"must be {rng}, got {value:g}")
    return float(value)


_FRACTION = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def _fraction(value: Any) -> Any:
    """``"8/255"`` (how budgets are written, and what the eps hints suggest) as the number 8/255, a
    signed one too so the range check names the problem; anything else unchanged (a zero denominator too: the number check then refuses it)."""
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m and float(m.group(2)) != 0:
            return float(m.group(1)) / float(m.group(2))
    return value


def _unknown(ctx: _Ctx, prefix: str, got: dict[str, Any], known: Any) -> None:
    for key in got:
        if key not in known:
            raise ctx.fail(f"{prefix}{key}", f"unknown key (known: {', '.join(known)})")


def parse_profile(raw: Any, source: str = "<profile>", default_name: str = "profile",
                  clip_span: float | None = 1.0) -> Profile:
    """Validate a parsed YAML document and build a :class:`Profile`. ``clip_span`` is the width of
    the input range the profile will run on (``--clip``): Linf budgets above it are refused; ``None``
    (only the gates are wanted) leaves them unchecked."""
    ctx = _Ctx(source, clip_span)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a profile is a mapping of keys (attacks, targets, ...), got "
                          f"{type(raw).__name__}")
    _unknown(ctx, "", raw, _TOP_KEYS)
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ctx.fail("name", f"must be a non-empty string, got {name!r}")
    description = raw.get("description", "") or ""
    if not isinstance(description, str):
        raise ctx.fail("description", "must be a string")
    seed = _int(ctx, "seed", raw.get("seed", 0), 0, MAX_SEED)
    samples = _int(ctx, "samples", raw.get("samples", 100), 1, allow_none=True)
    batch_size = _int(ctx, "batch_size", raw.get("batch_size", 64), 1, 65536)
    examples = _int(ctx, "examples", raw.get("examples", 4), 0, MAX_EXAMPLES)
    backend = raw.get("backend", "torch")
    if backend not in ("torch", "art"):
        raise ctx.fail("backend", f"unknown backend {backend!r} (known: torch, art)")
    targets = _targets(ctx, raw.get("targets", ["untargeted"]))
    attacks = _attacks(ctx, raw.get("attacks"), backend, targets)
    defences = _defences(ctx, raw.get("defences", [[]]))
    threat_models = _threat_models(ctx, raw.get("threat_models", ["adaptive"]))
    defence_params = _defence_params(ctx, raw.get("defence_params", {}))
    eot_samples = _int(ctx, "eot_samples", raw.get("eot_samples", DEFAULT_EOT_SAMPLES), 1, 1000)
    assert eot_samples is not None
    clever = _clever(ctx, raw.get("clever"), samples)
    detect = _detect(ctx, raw.get("detect"), backend)
    if not attacks and clever is None and detect is None:
        raise ctx.fail("attacks", "the profile runs nothing: give attacks, clever or detect")
    gates = _gates(ctx, raw.get("gates", []), attacks, targets, detect)
    assert seed is not None and batch_size is not None and examples is not None
    notes = _ignored_settings(raw, defences, threat_models, defence_params, eot_samples, clever is not None)
    listed = raw.get("defences")
    if (isinstance(listed, list) and len(listed) > 1 and all(isinstance(s, str) for s in listed)
            and () not in defences):  # on the command line `--defences ss,jpeg` is one stack
        notes += (f"defences [{', '.join(listed)}] is {len(listed)} one-defence stacks ({'; '.join(listed)}) and "
                  f"no undefended baseline; for one stack of them write [[{', '.join(listed)}]], and add [] for "
                  "the undefended model",)
    return Profile(name=name, source=source, description=description, seed=seed, samples=samples,
                   batch_size=batch_size, examples=examples, attacks=attacks, targets=targets, defences=defences,
                   threat_models=threat_models, defence_params=defence_params, eot_samples=eot_samples,
                   clever=clever, detect=detect, gates=gates, notes=notes)


def _ignored_settings(raw: dict[str, Any], defences: tuple[tuple[str, ...], ...], threat_models: tuple[str, ...],
                      defence_params: dict[str, dict[str, Any]], eot_samples: int, clever: bool) -> tuple[str, ...]:
    """One line per setting the profile gives explicitly that no cell of this run uses."""
    from robaudit.defences import get_defence_class

    used = {n for stack in defences for n in stack}
    notes = []
    unused = [n for n in defence_params if n not in used]
    if unused:
        notes.append(f"defence_params for {', '.join(unused)} ignored: no stack in defences uses "
                     f"{'it' if len(unused) == 1 else 'them'}")
    if "threat_models" in raw and not used:
        notes.append("threat_models ignored: no stack in defences has a defence, so every attack runs on the "
                     "undefended model")
    if "eot_samples" in raw and eot_samples > 1:
        if not any(get_defence_class(n).randomized for n in used):
            randomised = [n for n in KNOWN_DEFENCES if get_defence_class(n).randomized]
            notes.append(f"eot_samples {eot_samples} ignored: no stack is randomised (of the defences only "
                         f"{', '.join(randomised)} draws at random)")
        elif "adaptive" not in threat_models and not clever:
            notes.append(f"eot_samples {eot_samples} ignored: EOT averages gradients of adaptive attacks, and "
                         "threat_models is transfer only")
    return tuple(notes)


def _targets(ctx: _Ctx, value: Any) -> tuple[str, ...]:
    from robaudit.attacks.targets import parse_targets

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ctx.fail("targets", f"must be a non-empty list of target settings, got {value!r}")
    try:
        return tuple(t.value for t in parse_targets(",".join(value)))
    except ConfigError as exc:
        raise ctx.fail("targets", str(exc)) from None


def _attacks(ctx: _Ctx, value: Any, backend: str, targets: tuple[str, ...],
             prefix: str = "attacks") -> tuple[AttackSpec, ...]:
    from robaudit.attacks.base import AttackKind, Norm, TargetMode, params_from_overrides
    from robaudit.attacks.registry import AttackName, attack_names, get_attack_class

    if value is None:
        return ()
    if isinstance(value, list):  # [fgsm, pgd] shorthand: defaults for each
        if not all(isinstance(v, str) for v in value):
            raise ctx.fail(prefix, "a list of attacks must hold names only; use a mapping for parameters")
        value = {v: {} for v in value}
    if not isinstance(value, dict):
        raise ctx.fail(prefix, f"must be a mapping LABEL: {{parameters}}, got {type(value).__name__}")
    from robaudit.report.gates import DETECT_METRICS, REPORT_METRICS, ROW_METRICS, TARGET_WORDS, THREAT_WORDS

    reserved = (set(TARGET_WORDS) | set(THREAT_WORDS) | {"all"} | set(ROW_METRICS) | set(DETECT_METRICS)
                | set(REPORT_METRICS))
    out = []
    seen: dict[str, str] = {}
    for label, spec in value.items():
        key = f"{prefix}.{label}"
        if not isinstance(label, str) or not label or any(c.isspace() or c in "/|=" for c in label):
            raise ctx.fail(key, "an attack label is one word without spaces, '/', '|' or '='")
        # gates select cells by label, attack name or target setting, case-insensitively: a label
        # that reads as another of these would gate the wrong cells
        low = label.lower()
        if low in reserved:
            raise ctx.fail(key, f"the label {label!r} is a target setting or metric name in gates; choose another")
        if low in seen:
            raise ctx.fail(key, f"the labels {seen[low]!r} and {label!r} differ only in case; gates cannot tell them apart")
        seen[low] = label
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ctx.fail(key, f"must be a mapping of parameters, got {spec!r}")
        name = spec.get("attack", label)
        try:
            attack = AttackName(str(name).lower())
        except ValueError:
            raise ctx.fail(f"{key}.attack" if "attack" in spec else key,
                           f"unknown attack {name!r} (known: {', '.join(attack_names())})") from None
        if low in attack_names() and low != attack.value:
            raise ctx.fail(key, f"the label {label!r} names another attack (this one runs {attack.value}); "
                                "gates select by label and by attack name, so choose another label")
        a_backend = spec.get("backend", backend)
        if a_backend not in ("torch", "art"):
            raise ctx.fail(f"{key}.backend", f"unknown backend {a_backend!r} (known: torch, art)")
        cls = get_attack_class(attack, a_backend)
        norm = spec.get("norm")
        if norm is not None:
            try:
                norm_v = Norm.parse(str(norm))
            except ConfigError as exc:
                raise ctx.fail(f"{key}.norm", str(exc)) from None
            if norm_v not in cls.norms:
                raise ctx.fail(f"{key}.norm", f"{attack.value} does not support norm {norm_v.value} "
                                              f"(supported: {', '.join(n.value for n in cls.norms)})")
            norm = norm_v.value
        eff_norm = Norm(norm) if norm else cls.norms[0]
        eps = _fraction(spec.get("eps"))
        if eps is not None:
            if cls.kind is not AttackKind.FIXED_EPS:
                raise ctx.fail(f"{key}.eps", f"{attack.value} is a minimisation attack: it has no eps budget")
            span = ctx.clip_span
            if (eff_norm is Norm.LINF and span is not None and abs(span - 1.0) <= 1e-9
                    and isinstance(eps, (int, float)) and not isinstance(eps, bool) and 1 < eps <= 255):
                raise ctx.fail(f"{key}.eps", f"must be between 0 and 1 (pixel range), got {eps:g}: "
                                             f"did you mean {eps:g}/255 = {eps / 255:.4g}? (a model whose "
                                             "pixels are 0..255 needs --clip 0,255)")
            eps = _num(ctx, f"{key}.eps", eps, 0.0, span if eff_norm is Norm.LINF else None)
        elif cls.kind is AttackKind.FIXED_EPS and eff_norm not in cls.default_eps:
            raise ctx.fail(key, f"{attack.value} needs eps for norm {eff_norm.value} (no default)")
        params = {k: v for k, v in spec.items() if k not in _ATTACK_KEYS}
        for pk, pv in params.items():
            if isinstance(pv, bool) or pv is None:
                continue
            if not isinstance(pv, (int, float, str)):
                raise ctx.fail(f"{key}.{pk}", f"must be a number, a string or a boolean, got {pv!r}")
            if isinstance(pv, (int, float)) and pv < 0:
                raise ctx.fail(f"{key}.{pk}", f"must be >= 0, got {pv}")
        try:
            params_from_overrides(cls.Params, params, attack.value)
        except ConfigError as exc:
            bad = next((k for k in params if f"'{k}'" in str(exc) or f"{k}=" in str(exc)), None)
            raise ctx.fail(f"{key}.{bad}" if bad else key, str(exc)) from None
        if not any(cls.supports(TargetMode(t)) for t in targets):
            can = "untargeted" if cls.supports_untargeted else "targeted settings (least-likely, next-class)"
            raise ctx.fail(key, f"{attack.value} supports only {can}, and targets are [{', '.join(targets)}]: "
                                "this attack would never run")
        out.append(AttackSpec(label=label, name=attack.value, eps=eps, norm=norm, backend=a_backend, params=params))
    return tuple(out)


def _defences(ctx: _Ctx, value: Any) -> tuple[tuple[str, ...], ...]:
    known = ", ".join(KNOWN_DEFENCES)
    if value is None:
        return ((),)
    if isinstance(value, dict):
        _unknown(ctx, "defences.", value, ("combinations_of",))
        names = value.get("combinations_of")
        if not isinstance(names, list) or not names:
            raise ctx.fail("defences.combinations_of", "must be a non-empty list of defence names")
        for n in names:
            if not isinstance(n, str) or n not in KNOWN_DEFENCES:
                raise ctx.fail("defences.combinations_of", f"unknown defence {n!r} (known: {known})")
        if len(set(names)) != len(names):
            raise ctx.fail("defences.combinations_of", "lists a defence twice")
        return tuple(c for r in range(len(names) + 1) for c in itertools.combinations(names, r))
    if not isinstance(value, list) or not value:
        raise ctx.fail("defences", "must be a list of stacks (each a list of defence names; [] is no defence) "
                                   "or {combinations_of: [names]}")
    stacks: list[tuple[str, ...]] = []
    for i, stack in enumerate(value):
        key = f"defences[{i}]"
        if isinstance(stack, str):
            stack = [stack]
        if not isinstance(stack, list):
            raise ctx.fail(key, f"a stack is a list of defence names, got {stack!r}")
        for n in stack:
            if not isinstance(n, str) or n not in KNOWN_DEFENCES:
                raise ctx.fail(key, f"unknown defence {n!r} (known: {known})")
        if len(set(stack)) != len(stack):
            raise ctx.fail(key, "a stack cannot apply the same defence twice")
        if tuple(stack) in stacks:
            raise ctx.fail(key, f"stack [{', '.join(stack)}] is listed twice")
        stacks.append(tuple(stack))
    return tuple(stacks)


def _threat_models(ctx: _Ctx, value: Any) -> tuple[str, ...]:
    if value == "both" or value == ["both"]:
        return THREAT_MODELS
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ctx.fail("threat_models", f"must be a non-empty list of {', '.join(THREAT_MODELS)} (or both), "
                                        f"got {value!r}")
    for v in value:
        if v not in THREAT_MODELS:
            raise ctx.fail("threat_models", f"unknown threat model {v!r} (known: {', '.join(THREAT_MODELS)}, both)")
    if len(set(value)) != len(value):
        raise ctx.fail("threat_models", "lists a threat model twice")
    return tuple(t for t in THREAT_MODELS if t in value)


def _defence_params(ctx: _Ctx, value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ctx.fail("defence_params", "must be a mapping DEFENCE: {PARAM: VALUE}")
    out: dict[str, dict[str, Any]] = {}
    for name, params in value.items():
        key = f"defence_params.{name}"
        if name not in KNOWN_DEFENCES:
            raise ctx.fail(key, f"unknown defence {name!r} (known: {', '.join(KNOWN_DEFENCES)})")
        if not isinstance(params, dict):
            raise ctx.fail(key, "must be a mapping PARAM: VALUE")
        out[name] = dict(params)
    try:
        from robaudit.defences import build_stack

        build_stack(tuple(out), out)  # validates names, types and ranges of every override
    except ConfigError as exc:
        raise ctx.fail("defence_params", str(exc)) from None
    return out


def _clever(ctx: _Ctx, value: Any, samples: int | None) -> CleverSpec | None:
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ctx.fail("clever", f"must be a mapping ({', '.join(_CLEVER_KEYS)}) or null")
    _unknown(ctx, "clever.", value, _CLEVER_KEYS)
    spec = CleverSpec()
    kw: dict[str, Any] = {}
    for k in ("inputs", "batches", "batch_size"):
        if k in value:  # a Weibull fit needs at least two batch maxima
            kw[k] = _int(ctx, f"clever.{k}", value[k], 2 if k == "batches" else 1)
    if "radius" in value:
        kw["radius"] = _num(ctx, "clever.radius", value["radius"], 0.0)
        if kw["radius"] == 0:
            raise ctx.fail("clever.radius", "must be > 0")
    if "norm" in value:
        if value["norm"] not in CLEVER_NORMS:
            raise ctx.fail("clever.norm", f"unknown norm {value['norm']!r} (known: {', '.join(CLEVER_NORMS)})")
        kw["norm"] = value["norm"]
    spec = dataclasses.replace(spec, **kw)
    if samples is not None and spec.inputs > samples:
        raise ctx.fail("clever.inputs", f"{spec.inputs} is more than the profile's samples ({samples})")
    return spec


def _detect(ctx: _Ctx, value: Any, backend: str) -> DetectSpec | None:
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ctx.fail("detect", f"must be a mapping ({', '.join(_DETECT_KEYS)}) or null")
    _unknown(ctx, "detect.", value, _DETECT_KEYS)
    kw: dict[str, Any] = {}
    if "costs" in value:
        costs = value["costs"]
        if not isinstance(costs, list) or not costs:
            raise ctx.fail("detect.costs", "must be a non-empty list")
        for c in costs:
            if c not in DETECT_COSTS:
                raise ctx.fail("detect.costs", f"unknown cost attack {c!r} (known: {', '.join(DETECT_COSTS)})")
        if len(set(costs)) != len(costs):
            raise ctx.fail("detect.costs", "lists a cost attack twice")
        kw["costs"] = tuple(costs)
    attacks = value.get("attacks", list(DEFAULT_DETECT_ATTACKS))
    if attacks is None or (isinstance(attacks, (list, dict)) and not attacks):
        raise ctx.fail("detect.attacks", "must be a non-empty list of attack names or a mapping LABEL: {parameters}")
    specs = _attacks(ctx, attacks, "torch", ("untargeted",), prefix="detect.attacks")
    for spec in specs:
        if spec.backend != "torch":
            raise ctx.fail(f"detect.attacks.{spec.label}.backend", "detection crafts with robaudit's torch attacks only")
        if spec.norm not in (None, "linf"):
            raise ctx.fail(f"detect.attacks.{spec.label}.norm", "detection crafts Linf examples (norm: linf)")
    kw["attacks"] = specs
    if "craft" in value:
        if value["craft"] not in DETECT_CRAFT:
            raise ctx.fail("detect.craft", f"must be one of {', '.join(DETECT_CRAFT)}, got {value['craft']!r}")
        kw["craft"] = value["craft"]
    if "squeeze" in value:
        if not isinstance(value["squeeze"], bool):
            raise ctx.fail("detect.squeeze", f"must be true or false, got {value['squeeze']!r}")
        kw["squeeze"] = value["squeeze"]
    if "max_iter" in value:
        kw["max_iter"] = _int(ctx, "detect.max_iter", value["max_iter"], 1)
    if "samples" in value:
        kw["samples"] = _int(ctx, "detect.samples", value["samples"], 4, allow_none=True)
    if "fpr" in value:
        kw["fpr"] = _num(ctx, "detect.fpr", value["fpr"], 0.0, 1.0)
        if not 0.0 < kw["fpr"] < 1.0:
            raise ctx.fail("detect.fpr", f"must be strictly between 0 and 1, got {kw['fpr']:g}")
    return DetectSpec(**kw)


def _gates(ctx: _Ctx, value: Any, attacks: tuple[AttackSpec, ...], targets: tuple[str, ...],
           detect: DetectSpec | None = None) -> tuple[str, ...]:
    from robaudit.report.gates import check_selectors, parse_gate

    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.fail("gates", "must be a list of gate expressions like 'pgd untargeted success_rate <= 0.3'")
    labels = {a.label for a in attacks}
    names = {a.name for a in attacks}
    out = []
    for i, g in enumerate(value):
        try:
            gate = parse_gate(g)
            check_selectors(gate, labels, names, set(targets),
                            detect_words=None if detect is None else detect.selector_words())
        except ConfigError as exc:
            raise ctx.fail(f"gates[{i}]", str(exc)) from None
        out.append(gate.text)
    return tuple(out)
