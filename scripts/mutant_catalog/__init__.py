"""Every mutant `scripts/mutants.py` applies, by area (one module each).

Add a mutant to the module of the code it breaks."""

from __future__ import annotations

from mutant_catalog import (
    agents_clients,
    agents_inference,
    agents_loop,
    clients,
    engine_cache,
    gateway,
    http,
    http_metrics,
    observability_metrics,
    observability_traces,
    prompt_layout,
    sampling_controls,
    security,
    services,
    structured_output,
)
from mutant_catalog.mutant import Mutant

MUTANTS: tuple[Mutant, ...] = (
    *clients.MUTANTS,
    *http.MUTANTS,
    *http_metrics.MUTANTS,
    *gateway.MUTANTS,
    *services.MUTANTS,
    *engine_cache.MUTANTS,
    *sampling_controls.MUTANTS,
    *structured_output.MUTANTS,
    *prompt_layout.MUTANTS,
    *security.MUTANTS,
    *observability_metrics.MUTANTS,
    *observability_traces.MUTANTS,
    *agents_inference.MUTANTS,
    *agents_loop.MUTANTS,
    *agents_clients.MUTANTS,
)

__all__ = ["MUTANTS", "Mutant"]
