"""The unit_convert tool: converts a value between units of length, mass, time, volume, area, speed, data
and temperature."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from genmesh.errors import InvalidArgument, quote
from services.tools.tool import Tool

MAX_ABS_VALUE = 1e300
"""Largest magnitude accepted as input."""

# Each unit's size in its dimension's base unit (metre, kilogram, second, litre, square metre, metre per
# second, byte). Temperatures are affine and handled apart.
_FACTORS: Mapping[str, tuple[str, float]] = MappingProxyType(
    {
        # length, in metres
        "mm": ("length", 1e-3),
        "cm": ("length", 1e-2),
        "m": ("length", 1.0),
        "km": ("length", 1e3),
        "in": ("length", 0.0254),
        "ft": ("length", 0.3048),
        "yd": ("length", 0.9144),
        "mi": ("length", 1609.344),
        "nmi": ("length", 1852.0),
        # mass, in kilograms
        "mg": ("mass", 1e-6),
        "g": ("mass", 1e-3),
        "kg": ("mass", 1.0),
        "t": ("mass", 1e3),
        "oz": ("mass", 0.028349523125),
        "lb": ("mass", 0.45359237),
        "st": ("mass", 6.35029318),
        # time, in seconds
        "ms": ("time", 1e-3),
        "s": ("time", 1.0),
        "min": ("time", 60.0),
        "h": ("time", 3600.0),
        "d": ("time", 86400.0),
        "wk": ("time", 604800.0),
        # volume, in litres
        "ml": ("volume", 1e-3),
        "l": ("volume", 1.0),
        "m3": ("volume", 1e3),
        "tsp": ("volume", 0.00492892159375),
        "tbsp": ("volume", 0.01478676478125),
        "cup": ("volume", 0.2365882365),
        "pt": ("volume", 0.473176473),
        "qt": ("volume", 0.946352946),
        "gal": ("volume", 3.785411784),
        # area, in square metres
        "cm2": ("area", 1e-4),
        "m2": ("area", 1.0),
        "km2": ("area", 1e6),
        "ha": ("area", 1e4),
        "ft2": ("area", 0.09290304),
        "acre": ("area", 4046.8564224),
        # speed, in metres per second
        "m/s": ("speed", 1.0),
        "km/h": ("speed", 1 / 3.6),
        "mph": ("speed", 0.44704),
        "kn": ("speed", 1852.0 / 3600.0),
        # data, in bytes
        "bit": ("data", 0.125),
        "B": ("data", 1.0),
        "KB": ("data", 1e3),
        "MB": ("data", 1e6),
        "GB": ("data", 1e9),
        "TB": ("data", 1e12),
        "KiB": ("data", 1024.0),
        "MiB": ("data", 1024.0**2),
        "GiB": ("data", 1024.0**3),
        "TiB": ("data", 1024.0**4),
    }
)
_TEMPERATURES = ("C", "F", "K")
UNITS: tuple[str, ...] = (*_FACTORS, *_TEMPERATURES)
"""Every unit name the tool accepts (case-sensitive: ``MB`` is not ``mb``)."""


def dimension(unit: str) -> str:
    """The dimension of ``unit`` (``length``, ``temperature``...); raises KeyError if unknown."""
    return "temperature" if unit in _TEMPERATURES else _FACTORS[unit][0]


def _to_kelvin(value: float, unit: str) -> float:
    if unit == "C":
        return value + 273.15
    if unit == "F":
        return (value - 32.0) * 5.0 / 9.0 + 273.15
    return value


def _from_kelvin(kelvin: float, unit: str) -> float:
    if unit == "C":
        return kelvin - 273.15
    if unit == "F":
        return (kelvin - 273.15) * 9.0 / 5.0 + 32.0
    return kelvin


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``.

    Raises InvalidArgument on ``from_unit``/``to_unit`` for unknown units or units of different dimensions,
    on ``value`` for non-finite input, a temperature below absolute zero or a non-finite result.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument.field("value", "must be a finite number")
    if abs(value) > MAX_ABS_VALUE:
        raise InvalidArgument.field("value", f"must be within ±{MAX_ABS_VALUE:g}")
    for field, unit in (("from_unit", from_unit), ("to_unit", to_unit)):
        if unit not in UNITS:
            raise InvalidArgument.field(field, f"unknown unit {quote(unit)}")
    source, target = dimension(from_unit), dimension(to_unit)
    if source != target:
        raise InvalidArgument.field("to_unit", f"cannot convert {source} ({from_unit}) to {target} ({to_unit})")
    if source == "temperature":
        kelvin = _to_kelvin(float(value), from_unit)
        if kelvin < 0:
            raise InvalidArgument.field("value", "is below absolute zero")
        result = _from_kelvin(kelvin, to_unit)
    else:
        result = float(value) * _FACTORS[from_unit][1] / _FACTORS[to_unit][1]
    if not math.isfinite(result):
        raise InvalidArgument.field("value", "the result is not a finite number")
    return result


def unit_convert_schema() -> dict[str, Any]:
    """The JSON Schema of unit_convert's arguments (a fresh copy)."""
    units = list(UNITS)
    return {
        "type": "object",
        "properties": {
            "value": {"type": "number", "description": "The quantity to convert."},
            "from_unit": {"type": "string", "enum": units, "description": "Unit of value, e.g. km, lb, C, MiB."},
            "to_unit": {"type": "string", "enum": units, "description": "Unit to express it in (same dimension)."},
        },
        "required": ["value", "from_unit", "to_unit"],
        "additionalProperties": False,
    }


def _handle(arguments: dict[str, Any]) -> dict[str, Any]:
    value, source, target = arguments["value"], arguments["from_unit"], arguments["to_unit"]
    result = convert(value, source, target)
    return {"value": value, "from_unit": source, "to_unit": target, "result": result, "dimension": dimension(source)}


def unit_convert_tool() -> Tool:
    """The built-in ``unit_convert`` tool; returns ``{"value", "from_unit", "to_unit", "result", "dimension"}``."""
    return Tool(
        name="unit_convert",
        description=(
            "Convert a value between units of the same dimension: length, mass, time, volume, area, speed, "
            "data size or temperature (C, F, K)."
        ),
        parameters=unit_convert_schema(),
        handler=_handle,
        timeout_s=1.0,
        idempotent=True,
    )
