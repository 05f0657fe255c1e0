"""Profiles: every shipped profile validates; bad ones are refused with file, key and reason (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robaudit.config import load_profile, parse_profile, profile_names
from robaudit.engine.cells import ENGINES, Cell, CellKind, check_runnable, expand
from robaudit.errors import ConfigError

from .conftest import robaudit_cli


def test_shipped_profiles_exist_and_validate():
    names = profile_names()
    assert {"quick", "ci-gate", "paper-cifar10", "paper-imagenet", "a2d-mnist"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.source.endswith(f"{name}.yaml")


def test_paper_profiles_are_the_study_grid():
    for name in ("paper-cifar10", "paper-imagenet"):
        p = load_profile(name)
        assert len(p.attacks) == 7 and p.samples == 1000 and p.clever is not None
        assert {a.name for a in p.attacks} == {"apgd", "cw-l2", "cw-linf", "fgsm", "hopskipjump", "shadow", "universal"}
        assert set(p.targets) == {"untargeted", "least-likely", "next-class"}
        assert len(p.defences) == 8 and () in p.defences  # none plus all seven stacks of ss, jpeg, tvm


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return str(path)


BASE = "attacks:\n  fgsm: {eps: 0.1}\n"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (BASE + "sample: 10\n", "sample", "unknown key"),
        ("attacks:\n  nope: {}\n", "attacks.nope", "unknown attack 'nope'"),
        ("attacks:\n  x: {attack: pgdd}\n", "attacks.x.attack", "unknown attack 'pgdd'"),
        # labels that gates would read as something else
        ("attacks:\n  untargeted: {attack: fgsm}\n", "attacks.untargeted", "target setting or metric name"),
        ("attacks:\n  LL: {attack: fgsm}\n", "attacks.LL", "target setting or metric name"),
        ("attacks:\n  success_rate: {attack: fgsm}\n", "attacks.success_rate", "target setting or metric name"),
        ("attacks:\n  pgd: {attack: fgsm}\n", "attacks.pgd", "names another attack (this one runs fgsm)"),
        ("attacks:\n  weak: {attack: fgsm}\n  WEAK: {attack: pgd}\n", "attacks.WEAK", "differ only in case"),
        ("attacks:\n  a=b: {attack: fgsm}\n", "attacks.a=b", "without spaces"),
        ("attacks:\n  pgd: {eps: -0.1}\n", "attacks.pgd.eps", "must be between 0 and 1"),
        ("attacks:\n  pgd: {eps: 8}\n", "attacks.pgd.eps", "must be between 0 and 1"),
        ("attacks:\n  pgd: {steps: -3}\n", "attacks.pgd.steps", "must be >= 0"),
        ("attacks:\n  pgd: {stepz: 3}\n", "attacks.pgd.stepz", "unknown parameter 'stepz'"),
        ("attacks:\n  cw-l2: {eps: 0.1}\n", "attacks.cw-l2.eps", "minimisation attack"),
        ("attacks:\n  pgd: {norm: l0}\n", "attacks.pgd.norm", "does not support norm l0"),
        ("attacks:\n  deepfool: {}\ntargets: [least-likely]\n", "attacks.deepfool", "would never run"),
        (BASE + "targets: [sideways]\n", "targets", "unknown target 'sideways'"),
        (BASE + "targets: [all, untargeted]\n", "targets", "'all' stands alone"),
        (BASE + "samples: 0\n", "samples", "must be >= 1"),
        (BASE + "seed: -1\n", "seed", "between 0 and"),
        (BASE + "examples: 99\n", "examples", "between 0 and 64"),
        (BASE + "defences: [[ss, ss]]\n", "defences[0]", "same defence twice"),
        (BASE + "defences: [[magic]]\n", "defences[0]", "unknown defence 'magic'"),
        (BASE + "defences: [[[]]]\n", "defences[0]", "unknown defence []"),
        (BASE + "defences: {combinations_of: [[ss]]}\n", "defences.combinations_of", "unknown defence ['ss']"),
        (BASE + "clever: {radius: 0}\n", "clever.radius", "must be > 0"),
        (BASE + "clever: {batches: 1}\n", "clever.batches", "must be >= 2"),
        (BASE + "clever: {inputs: 500}\nsamples: 100\n", "clever.inputs", "more than the profile's samples"),
        (BASE + "clever: {norm: l7}\n", "clever.norm", "unknown norm"),
        (BASE + "detect: {costs: [walk]}\n", "detect.costs", "unknown cost attack"),
        (BASE + "detect: {speed: 3}\n", "detect.speed", "unknown key"),
        (BASE + "detect: {attacks: [walk]}\n", "detect.attacks.walk", "unknown attack 'walk'"),
        (BASE + "detect: {attacks: {fgsm: {norm: l2, eps: 1.0}}}\n", "detect.attacks.fgsm.norm", "Linf"),
        (BASE + "detect: {attacks: {bim: {steps: -1}}}\n", "detect.attacks.bim.steps", "must be >= 0"),
        (BASE + "detect: {fpr: 1.0}\n", "detect.fpr", "strictly between 0 and 1"),
        (BASE + "detect: {costs: [jsma, jsma]}\n", "detect.costs", "twice"),
        (BASE + "gates: ['detect auroc >= 0.9']\n", "gates[0]", "no detect section"),
        (BASE + "detect: {attacks: [fgsm]}\ngates: ['detect pgd auroc >= 0.9']\n", "gates[0]",
         "selector 'pgd' is not a detection attack or score"),
        (BASE + "detect: {attacks: [fgsm]}\ngates: ['detect success_rate <= 0.9']\n", "gates[0]",
         "'detect' selects detection rows"),
        (BASE + "detect: {attacks: [fgsm]}\ngates: ['detect auroc >= 90']\n", "gates[0]", "fraction in [0, 1]"),
        (BASE + "gates: ['pgd success_rate <= 0.3']\n", "gates[0]", "selector 'pgd' is not an attack"),
        (BASE + "gates: ['fgsm success_rate <= 30']\n", "gates[0]", "fraction in [0, 1]"),
        (BASE + "gates: ['fgsm speed <= 3']\n", "gates[0]", "unknown metric 'speed'"),
        (BASE + "gates: ['fgsm success_rate ~ 3']\n", "gates[0]", "cannot parse gate"),
        ("seed: 1\n", "attacks", "runs nothing"),
    ],
)
def test_invalid_profiles_name_file_key_and_reason(tmp_path, text, key, reason):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert reason in msg, msg


def test_eps_may_be_written_as_a_fraction(tmp_path):
    """QA: `eps: 8/255` was refused as not a number, though the eps hints write budgets that way."""
    prof = load_profile(_write(tmp_path, "attacks:\n  pgd: {eps: 8/255}\n  pgd-l2: {attack: pgd, norm: l2, "
                                         "eps: ' 1 / 2 '}\n"))
    assert [a.eps for a in prof.attacks] == [pytest.approx(8 / 255), 0.5]
    for bad, reason in (("8/0", "must be a finite number"), ("300/255", "between 0 and 1"),
                        ("8/255/2", "must be a finite number"), ("-8/255", "between 0 and 1, got -0.03137")):
        with pytest.raises(ConfigError, match=reason):
            load_profile(_write(tmp_path, f"attacks:\n  pgd: {{eps: '{bad}'}}\n"))


def test_yaml_is_loaded_safely(tmp_path):
    path = _write(tmp_path, "!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(path)


@pytest.mark.parametrize("text, line, key", [
    ("name: x\nattacks: [fgsm]\nattacks: [pgd]\n", 3, "attacks"),
    ("name: x\nattacks:\n  - {attack: pgd, eps: 0.1, eps: 0.3}\n", 3, "eps"),
])
def test_duplicate_keys_are_refused_with_their_lines(tmp_path, text, line, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"not valid YAML \(line {line}\): found duplicate key '{key}'"):
        load_profile(path)


def test_merge_keys_may_be_overridden(tmp_path):
    text = ("name: x\nbase: &b {attack: pgd, eps: 0.1}\nattacks:\n  - {<<: *b, eps: 0.2}\n")
    from robaudit.config.yaml_load import load_yaml

    assert load_yaml(text)["attacks"] == [{"attack": "pgd", "eps": 0.2}]


def test_n_override_is_checked_like_the_profile_samples():
    prof = parse_profile({"samples": 100, "attacks": {"fgsm": {}}, "clever": {"inputs": 50}})
    assert prof.with_overrides(samples=60).samples == 60
    with pytest.raises(ConfigError, match=r"-n 5 is fewer than the profile's clever.inputs \(50\)"):
        prof.with_overrides(samples=5)


def test_exponent_numbers_are_numbers():
    """YAML 1.1 (PyYAML) reads ``3e-2`` as a string, so ``eps: 3e-2`` was refused as not a number."""
    from robaudit.config.yaml_load import load_yaml

    assert load_yaml("a: 3e-2\nb: 1E+3\nc: .5e-1\nd: 3e\ne: 8\n") == {"a": 0.03, "b": 1000.0, "c": 0.05, "d": "3e", "e": 8}
    prof = parse_profile(load_yaml("attacks:\n  pgd: {eps: 3e-2}\n"))
    assert prof.attacks[0].eps == 0.03
    # an integral exponent is an integer wherever one is asked for; a fractional one is still refused
    prof = parse_profile(load_yaml("samples: 1e2\nseed: 7e0\nattacks:\n  pgd: {steps: 1e1}\n"))
    assert (prof.samples, prof.seed) == (100, 7) and isinstance(prof.samples, int)
    with pytest.raises(ConfigError, match="samples: must be an integer, got 2.5"):
        parse_profile(load_yaml("samples: 2.5e0\nattacks: [fgsm]\n"))


def test_shipped_profiles_are_the_package_data():
    """``robaudit/profiles`` (package data, so wheels carry the profiles) is the project's ``profiles/``."""
    from robaudit.config.profile import PROFILES_DIR, profile_names

    top = Path(__file__).resolve().parents[1] / "profiles"
    assert PROFILES_DIR.resolve() == top.resolve()
    assert profile_names() == sorted(p.stem for p in top.glob("*.yaml")) and "quick" in profile_names()
    pyproject = (top.parent / "pyproject.toml").read_text()
    assert '"profiles/*.yaml"' in pyproject


def test_unknown_profile_name_lists_shipped():
    with pytest.raises(ConfigError, match="shipped: .*quick"):
        load_profile("no-such-profile")


def test_every_cell_kind_has_a_registry_entry():
    assert set(ENGINES) == set(CellKind)


def test_missing_engines_are_refused_before_running(monkeypatch):
    import robaudit.engine.cells as cells_mod

    p = load_profile("paper-cifar10")
    check_runnable(expand(p, 1), p.source)  # the defence and CLEVER engines exist: the study grid runs
    monkeypatch.setitem(cells_mod.ENGINES, CellKind.CLEVER, None)
    monkeypatch.setattr(cells_mod, "DEFENCE_ENGINE", None)
    with pytest.raises(ConfigError) as err:
        cells_mod.check_runnable(expand(p, 1), p.source)
    msg = str(err.value)
    assert "defence stacks [" in msg and "no defence engine yet" in msg and "clever cells" in msg
    p = load_profile("a2d-mnist")
    check_runnable(expand(p, 1), p.source)  # the detection engine is part of audits


def test_detect_section_parses_names_and_parameters():
    p = parse_profile({"detect": {"costs": ["bim-linf", "jsma"], "squeeze": True,
                                  "attacks": {"fgsm": {}, "strong": {"attack": "bim", "eps": 0.2, "steps": 30}}},
                       "gates": ["detect attack=strong cost=jsma auroc >= 0.8", "detect fpr <= 0.1"]})
    assert p.detect is not None and [a.label for a in p.detect.attacks] == ["fgsm", "strong"]
    assert p.detect.attacks[1].name == "bim" and p.detect.attacks[1].params == {"steps": 30}
    assert p.detect.feature_names() == ("bim-linf", "jsma", "squeeze", "bim-linf+squeeze", "jsma+squeeze")
    default = parse_profile({"detect": True})
    assert [a.name for a in default.detect.attacks] == ["fgsm", "bim", "jsma", "cw-l2", "deepfool"]
    assert p.to_dict()["detect"]["attacks"][1]["label"] == "strong"
    cells = expand(p, 2)
    assert [c.id for c in cells] == ["m0/detect/detect/-/none", "m1/detect/detect/-/none"]


def test_cell_ids_and_seeds_are_stable():
    p = parse_profile({"attacks": {"fgsm": {}, "pgd": {}}, "targets": "all", "seed": 3})
    cells = expand(p, 2)
    assert len(cells) == 12 and len({c.id for c in cells}) == 12
    c = next(c for c in cells if c.id == "m1/attack/pgd/next-class/none")
    again = Cell(CellKind.ATTACK, 1, "pgd", "next-class", (), p.attacks[1])
    assert again.seed(3) == c.seed(3) != c.seed(4)
    assert len({c.seed(3) for c in cells}) == 12


def test_linf_eps_is_bounded_by_the_clip_range_not_by_one(tmp_path):
    """QA 11: `defend eval --clip 0,255 --eps 8` was refused as outside [0, 1] (and a profile's eps
    likewise), though `attack` takes budgets in the model's own range."""
    path = _write(tmp_path, "attacks:\n  pgd: {eps: 8}\n  fgsm: {eps: 255}\n")
    assert [a.eps for a in load_profile(path, clip_span=255.0).attacks] == [8.0, 255.0]
    with pytest.raises(ConfigError, match=r"attacks.pgd.eps: must be between 0 and 1 \(pixel range\), got 8: "
                                          r"did you mean 8/255 = 0.03137\? \(a model whose pixels are 0..255 needs"):
        load_profile(path)
    with pytest.raises(ConfigError, match="attacks.pgd.eps: must be between 0 and 2, got 8"):
        load_profile(path, clip_span=2.0)  # no "/255" hint off the [0, 1] range
    assert load_profile(path, clip_span=None).attacks[0].eps == 8.0  # only its gates wanted: unchecked
    proc = robaudit_cli("defend", "eval", "demo:mnist", "--data", "demo:mnist", "-D", "ss", "-a", "fgsm",
                        "--eps", "300", "--clip", "0,255", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "attacks.fgsm.eps: must be between 0 and 255, got 300" in proc.stderr


def test_cli_refuses_bad_profile_with_exit_2(tmp_path):
    path = _write(tmp_path, "attacks:\n  pgd: {steps: -3}\n")
    proc = robaudit_cli("audit", "demo:mnist", "--data", "demo:mnist", "--profile", path, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert "attacks.pgd.steps: must be >= 0" in proc.stderr and "Traceback" not in proc.stderr




def test_profiles_default_to_the_same_eot_as_defend_eval():
    """QA: a profile without eot_samples ran TVM stacks with 1 draw, `defend eval` with 4, so the same
    grid gave different adaptive rows by entry point."""
    from robaudit.config.profile import DEFAULT_EOT_SAMPLES

    prof = parse_profile({"attacks": ["fgsm"], "defences": [[], ["tvm"]]})
    assert prof.eot_samples == DEFAULT_EOT_SAMPLES == 4 and prof.notes == ()
    assert parse_profile({"attacks": ["fgsm"], "defences": [[], ["tvm"]], "eot_samples": 1}).eot_samples == 1


def test_settings_that_change_nothing_are_noted_not_refused():
    """defence_params for a defence in no stack, eot_samples without a randomised stack and
    threat_models without a defended stack ran silently as no-ops; each is now a warning."""
    base = {"attacks": ["fgsm"]}
    assert parse_profile({**base, "defences": [[], ["tvm"]], "defence_params": {"tvm": {"lamb": 0.3}},
                          "eot_samples": 4, "threat_models": "both"}).notes == ()
    assert parse_profile({**base, "defences": [[], ["ss"]], "eot_samples": 1}).notes == ()  # 1 is no EOT
    prof = parse_profile({**base, "defences": [[], ["ss"]], "defence_params": {"tvm": {"lamb": 0.3}, "ss": {}},
                          "eot_samples": 3})
    assert prof.notes == ("defence_params for tvm ignored: no stack in defences uses it",
                          "eot_samples 3 ignored: no stack is randomised (of the defences only tvm draws at random)")
    notes = parse_profile({**base, "threat_models": ["transfer"], "eot_samples": 2}).notes
    assert notes[0].startswith("threat_models ignored: no stack in defences has a defence") and len(notes) == 2
    notes = parse_profile({**base, "defences": [["tvm"]], "threat_models": ["transfer"], "eot_samples": 2}).notes
    assert notes == ("eot_samples 2 ignored: EOT averages gradients of adaptive attacks, and threat_models is "
                     "transfer only",)
    # CLEVER attacks the defended model itself, so EOT applies there whatever the threat models
    assert parse_profile({**base, "defences": [["tvm"]], "threat_models": ["transfer"], "eot_samples": 2,
                          "clever": {"inputs": 5}, "samples": 5}).notes == ()
    # notes are not the profile's content: the resume fingerprint does not change with them
    assert "notes" not in prof.to_dict()
    assert prof.digest == parse_profile({**base, "defences": [[], ["ss"]], "eot_samples": 3,
                                         "defence_params": {"tvm": {"lamb": 0.3}, "ss": {}}}).digest


def test_a_shipped_profile_name_is_not_shadowed_by_a_folder(tmp_path, monkeypatch):
    """A folder named ``quick`` in the working folder made ``--profile quick`` fail with "profile
    file quick does not exist"."""
    from robaudit.config.profile import PROFILES_DIR, resolve_profile_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").mkdir()
    assert resolve_profile_path("quick") == PROFILES_DIR / "quick.yaml"
    (tmp_path / "mine.yaml").mkdir()
    with pytest.raises(ConfigError, match="mine.yaml is a folder, not a YAML file"):
        resolve_profile_path("mine.yaml")
    with pytest.raises(ConfigError, match="profile file gone.yaml does not exist"):
        resolve_profile_path("gone.yaml")
    (tmp_path / "own").write_text("attacks: [fgsm]\n")  # a file without a suffix is still read as given
    assert resolve_profile_path("own").resolve() == tmp_path / "own"
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        resolve_profile_path("nope")


def test_the_readme_profile_example_is_a_valid_profile():
    """The README's profile with every key parses, gates included (a doc that drifts fails here)."""
    from robaudit.config.yaml_load import load_yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("A profile, with every key", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    prof = parse_profile(load_yaml(block), source="README")
    assert [a.label for a in prof.attacks] == ["fgsm", "pgd", "pgd-l2", "cw-l2"]
    assert "label=pgd untargeted success_rate <= 0.3" in prof.gates


def test_a_flat_list_of_defence_names_is_noted_as_separate_stacks():
    """QA 12: `defences: [ss, jpeg]` (the CLI's `--defences ss,jpeg` is one stack) ran two one-defence
    stacks and no undefended baseline, silently."""
    base = {"attacks": ["fgsm"]}
    prof = parse_profile({**base, "defences": ["ss", "jpeg"]})
    assert prof.defences == (("ss",), ("jpeg",))
    assert prof.notes == ("defences [ss, jpeg] is 2 one-defence stacks (ss; jpeg) and no undefended baseline; for "
                          "one stack of them write [[ss, jpeg]], and add [] for the undefended model",)
    assert parse_profile({**base, "defences": [[], "ss", "jpeg"]}).notes == ()  # a baseline: meant as stacks
    assert parse_profile({**base, "defences": [["ss", "jpeg"]]}).notes == ()
    assert parse_profile({**base, "defences": ["ss"]}).notes == ()
