"""Attack-as-Defense (A2D) detection: attack costs as features, detectors over them, a JSON store."""
