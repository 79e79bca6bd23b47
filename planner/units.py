"""SI conversion factors shared by the spec modules (profiles are written in readable units)."""
from __future__ import annotations

GIB = 1024**3
GB = 1e9
GIGA = 1e9
TERA = 1e12
MICRO = 1e-6
NANO = 1e-9
