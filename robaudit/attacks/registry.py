"""Registry of attacks. Every :class:`AttackName` must resolve for the ``torch`` backend or the
``art`` backend (a test walks every member), so an attack cannot be half-registered.

Entries are ``module:Class`` strings imported lazily, so importing the registry stays cheap.
"""

from __future__ import annotations

import importlib
from enum import Enum

from robaudit.attacks.base import Attack
from robaudit.errors import ConfigError


class AttackName(str, Enum):
    FGSM = "fgsm"
    BIM = "bim"
    PGD = "pgd"
    APGD = "apgd"
    CW_L2 = "cw-l2"
    CW_LINF = "cw-linf"
    DEEPFOOL = "deepfool"
    JSMA = "jsma"
    HOPSKIPJUMP = "hopskipjump"
    SHADOW = "shadow"
    UNIVERSAL = "universal"
    FAB = "fab"


BACKENDS = ("torch", "art")

# name -> backend -> "module:Class"
_ENTRIES: dict[AttackName, dict[str, str]] = {
    AttackName.FGSM: {"torch": "robaudit.attacks.fgsm:FGSM", "art": "robaudit.attacks.fgsm:ArtFGSM"},
    AttackName.BIM: {"torch": "robaudit.attacks.bim:BIM", "art": "robaudit.attacks.bim:ArtBIM"},
    AttackName.PGD: {"torch": "robaudit.attacks.pgd:PGD", "art": "robaudit.attacks.pgd:ArtPGD"},
    AttackName.APGD: {"torch": "robaudit.attacks.apgd:APGD", "art": "robaudit.attacks.apgd:ArtAPGD"},
    AttackName.CW_L2: {"torch": "robaudit.attacks.cw_l2:CWL2", "art": "robaudit.attacks.cw_l2:ArtCWL2"},
    AttackName.CW_LINF: {"torch": "robaudit.attacks.cw_linf:CWLinf", "art": "robaudit.attacks.cw_linf:ArtCWLinf"},
    AttackName.DEEPFOOL: {"torch": "robaudit.attacks.deepfool:DeepFool", "art": "robaudit.attacks.deepfool:ArtDeepFool"},
    AttackName.JSMA: {"torch": "robaudit.attacks.jsma:JSMA", "art": "robaudit.attacks.jsma:ArtJSMA"},
    AttackName.HOPSKIPJUMP: {"torch": "robaudit.attacks.hopskipjump:HopSkipJump",
                             "art": "robaudit.attacks.hopskipjump:ArtHopSkipJump"},
    AttackName.SHADOW: {"torch": "robaudit.attacks.shadow:Shadow", "art": "robaudit.attacks.shadow:ArtShadow"},
    AttackName.UNIVERSAL: {"torch": "robaudit.attacks.universal:Universal",
                           "art": "robaudit.attacks.universal:ArtUniversal"},
    AttackName.FAB: {"torch": "robaudit.attacks.fab:FAB"},
}


def attack_names() -> list[str]:
    return [a.value for a in AttackName]


def parse_attack_names(spec: str) -> list[AttackName]:
    """Parse ``fgsm,pgd`` or ``all``; unknown names are a :class:`ConfigError`."""
    if spec.strip().lower() == "all":
        return list(AttackName)
    out: list[AttackName] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        try:
            out.append(AttackName(name))
        except ValueError:
            raise ConfigError(f"unknown attack {name!r} (known: {', '.join(attack_names())}, all)") from None
    if not out:
        raise ConfigError("no attack given: use --attack NAME[,NAME...] or all")
    return list(dict.fromkeys(out))


def available_backends(name: AttackName) -> tuple[str, ...]:
    return tuple(b for b in BACKENDS if b in _ENTRIES[name])


def get_attack_class(name: AttackName, backend: str = "torch") -> type[Attack]:
    """The class for ``name``; falls back to the other backend when one has no implementation."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    entries = _ENTRIES[name]
    target = entries.get(backend) or next(iter(entries.values()))
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls
