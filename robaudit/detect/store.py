"""The detector file: versioned JSON (never pickle) holding the model's sha256, the cost attacks'
exact parameters, the optional squeeze parameters and the fitted detector with its thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robaudit import __version__
from robaudit.detect.detectors import detector_from_dict
from robaudit.detect.interface import CostParams, Detector, DetectorFileError, DetectorMismatch
from robaudit.detect.squeeze import SqueezeParams
from robaudit.report.writer import read_json_file, write_json_atomic

FORMAT = "robaudit-detector"
VERSION = 1


@dataclass
class DetectorFile:
    """Everything needed to score new inputs exactly as the detector was fitted."""

    model_sha256: str
    """Hash of the model file the detector was fitted on; scoring with another model is refused."""
    costs: list[CostParams]
    """The cost attacks to run, with their parameters."""
    detector: Detector
    clip: tuple[float, float] = (0.0, 1.0)
    input_shape: tuple[int, ...] = ()
    squeeze: SqueezeParams | None = None
    """Set when a detector reads the ``squeeze`` feature."""
    model_path: str = ""
    fit: dict[str, Any] = field(default_factory=dict)
    """How it was fitted: data, n, seed, adversarial source, fit-time rates."""

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "robaudit_version": __version__,
                "model": {"sha256": self.model_sha256, "path": self.model_path, "clip": list(self.clip),
                          "input_shape": list(self.input_shape)},
                "costs": [c.to_dict() for c in self.costs],
                "squeeze": self.squeeze.to_dict() if self.squeeze else None,
                "detector": self.detector.to_dict(), "fit": self.fit}

    @classmethod
    def from_dict(cls, d: Any, source: str = "detector file") -> "DetectorFile":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DetectorFileError(f"{source} is not a robaudit detector file (format != {FORMAT!r})")
        if d.get("version") != VERSION:
            raise DetectorFileError(f"{source} has detector file version {d.get('version')!r}; "
                                    f"this robaudit reads version {VERSION}: refit with `robaudit detect fit`")
        try:
            model = d["model"]
            return cls(model_sha256=str(model["sha256"]), costs=[CostParams.from_dict(c) for c in d["costs"]],
                       detector=detector_from_dict(d["detector"]), clip=tuple(model["clip"]),  # type: ignore[arg-type]
                       input_shape=tuple(model["input_shape"]),
                       squeeze=SqueezeParams.from_dict(d["squeeze"]) if d.get("squeeze") else None,
                       model_path=str(model.get("path", "")), fit=dict(d.get("fit") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectorFileError(f"{source} is malformed: {type(exc).__name__}: {exc}") from None

    def check_model(self, sha256: str, path: str = "") -> None:
        """Refuse to score with a model other than the one the detector was fitted on."""
        if sha256 != self.model_sha256:
            raise DetectorMismatch(
                f"the detector was fitted on model sha256 {self.model_sha256[:12]}... ({self.model_path or '?'}) "
                f"but {path or 'this model'} has sha256 {sha256[:12]}...: costs are model-specific, refit the detector")

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())


def load_detector_file(path: str | Path) -> DetectorFile:
    return DetectorFile.from_dict(read_json_file(path, "detector file", DetectorFileError), str(Path(path)))
