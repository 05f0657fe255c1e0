"""Attack layer: one module per attack behind a shared base class and a registry."""
