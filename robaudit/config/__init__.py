"""Profiles: YAML files that describe an audit (attacks, targets, defences, CLEVER, detection, gates)."""

from robaudit.config.profile import (
    KNOWN_DEFENCES,
    PROFILES_DIR,
    AttackSpec,
    CleverSpec,
    DetectSpec,
    Profile,
    load_profile,
    parse_profile,
    profile_names,
    resolve_profile_path,
)

__all__ = ["KNOWN_DEFENCES", "PROFILES_DIR", "AttackSpec", "CleverSpec", "DetectSpec", "Profile", "load_profile",
           "parse_profile", "profile_names", "resolve_profile_path"]
