"""Every mutant `scripts/mutants.py` applies, by area (one module each).

Add a mutant to the module of the code it breaks."""

from __future__ import annotations

from mutant_catalog import (
    clients,
    gateway,
    http,
    observability_metrics,
    observability_traces,
    security,
    services,
)
from mutant_catalog.mutant import Mutant

MUTANTS: tuple[Mutant, ...] = (
    *clients.MUTANTS,
    *http.MUTANTS,
    *gateway.MUTANTS,
    *services.MUTANTS,
    *security.MUTANTS,
    *observability_metrics.MUTANTS,
    *observability_traces.MUTANTS,
)

__all__ = ["MUTANTS", "Mutant"]
