"""The metric names genmesh's code defines, read from its source; the PromQL expressions of the operator files
(deploy/grafana's dashboard, deploy/prometheus's alerts) and what each asks of them: which metrics, which labels.

The source is read, not run: every string the code spells as a metric name (literals, f-strings over module
constants such as ``P = "genmesh_gateway_"``), with its kind and labels where it is the name given to
``Metrics.counter/gauge/histogram`` or to a ``*MetricFamily`` of a collector. Labels a collector sets some other
way are unknown (None), and then not checked.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genmesh.metrics import process_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "genmesh-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SOURCES = ("genmesh", "gateway", "services")
NAME = re.compile(r"genmesh_[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
#: Callables that define a metric: the kind, and where the labels are given (positional index; else ``labels=``).
DEFINERS = {
    "counter": ("counter", 2),
    "gauge": ("gauge", 2),
    "histogram": ("histogram", 3),
    "CounterMetricFamily": ("counter", 3),
    "GaugeMetricFamily": ("gauge", 3),
    "HistogramMetricFamily": ("histogram", 3),
}
#: Labels Prometheus gives every target (the scrape configurations of deploy/prometheus, a ServiceMonitor).
TARGET_LABELS = frozenset({"job", "instance", "service", "namespace", "pod", "container", "endpoint"})
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"})


@dataclass
class Definition:
    """What the code says of one metric: its kinds (empty when only spelt) and labels (None: not known)."""

    kinds: set[str] = field(default_factory=set)
    labels: set[str] | None = None


def _text(node: ast.AST | None, constants: dict[str, object]) -> str | None:
    """The string ``node`` always evaluates to, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and isinstance(constants.get(node.id), str):
        return str(constants[node.id])
    if isinstance(node, ast.JoinedStr):
        parts = [
            _text(v.value if isinstance(v, ast.FormattedValue) and v.format_spec is None else v, constants)
            for v in node.values
        ]
        return None if None in parts else "".join(str(p) for p in parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left, constants), _text(node.right, constants)
        return None if left is None or right is None else left + right
    return None


def _strings(node: ast.AST | None, constants: dict[str, object]) -> list[str] | None:
    """The strings of a list or tuple of them (module constants and ``*`` included), or None."""
    if isinstance(node, ast.Name):
        known = constants.get(node.id)
        return [str(s) for s in known] if isinstance(known, tuple) else None
    if not isinstance(node, ast.List | ast.Tuple):
        return None
    out: list[str] = []
    for item in node.elts:
        found = _strings(item.value, constants) if isinstance(item, ast.Starred) else [_text(item, constants)]
        if found is None or None in found:
            return None
        out += [str(f) for f in found]
    return out


def _constants(tree: ast.Module) -> dict[str, object]:
    """Module-level names bound to a string or a tuple of strings."""
    constants: dict[str, object] = {}
    for node in tree.body:
        target: ast.expr
        value: ast.expr | None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and value is not None:
            text = _text(value, constants)
            strings = None if text is not None else _strings(value, constants)
            if text is not None or strings is not None:
                constants[target.id] = text if text is not None else tuple(strings or ())
    return constants


def _files() -> Iterator[Path]:
    for source in SOURCES:
        yield from (p for p in (ROOT / source).rglob("*.py") if "v1" not in p.relative_to(ROOT).parts)


def definitions() -> dict[str, Definition]:
    """Every metric name the code spells, with its kind and labels where it defines the metric; and the
    process collectors' names (``process_*``, ``python_*``) as the process registry serves them."""
    found: dict[str, Definition] = {}
    for path in _files():
        tree = ast.parse(path.read_text(), str(path))
        constants = _constants(tree)
        for node in ast.walk(tree):
            text = _text(node, constants) if isinstance(node, ast.Constant | ast.JoinedStr) else None
            if text is not None and NAME.fullmatch(text):
                found.setdefault(text, Definition())
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            name = _text(node.args[0], constants)
            if callee not in DEFINERS or name is None or not NAME.fullmatch(name):
                continue
            kind, at = DEFINERS[callee]
            keyword = next((k.value for k in node.keywords if k.arg == "labels"), None)
            given = node.args[at] if len(node.args) > at else keyword
            labels = _strings(given, constants) if given is not None else []
            definition = found.setdefault(name, Definition())
            definition.kinds.add(kind)
            if labels is not None:
                definition.labels = (definition.labels or set()) | set(labels)
    for family in process_metrics().registry.collect():
        if family.name.startswith("genmesh_"):  # the code's own, defined above; tests run before may have added some
            continue
        names = {sample.name for sample in family.samples} | {family.name}
        labelled = {label for sample in family.samples for label in sample.labels}
        for name in names:
            found.setdefault(name, Definition({family.type}, labelled))
    return found


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:$.\"])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (function names, keywords, labels and strings left out)."""
    bare = _STRING.sub('""', expr)
    bare = _GROUPING.sub("", re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", bare)))
    bare = re.sub(r"\$\{?\w+\}?", "", bare)  # Grafana variables
    return {n for n in _IDENTIFIER.findall(bare) if n not in KEYWORDS and not re.fullmatch(r"[\d.e+-]+|Inf|NaN", n)}


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Each ``name{...}`` of an expression: the name and its matchers (label → (operator, value))."""
    return [
        (name, {m.group(1): (m.group(2), m.group(3)) for m in _MATCHER.finditer(body)})
        for name, body in _SELECTOR.findall(expr)
    ]


#: Series Prometheus makes itself for every target.
SYNTHETIC = {"up": Definition({"gauge"}, set())}


def resolve(name: str, known: dict[str, Definition]) -> tuple[str, Definition] | None:
    """The metric a series name belongs to (``x_bucket`` → the histogram ``x``), or None."""
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and base in known:
            return (base, known[base]) if "histogram" in known[base].kinds else None
    found = known.get(name, SYNTHETIC.get(name))
    return None if found is None else (name, found)


def problems(expr: str, known: dict[str, Definition]) -> list[str]:
    """What in ``expr`` the code does not define: unknown metric names, a histogram's series asked of another
    kind, labels the metric does not have (in a selector, or in by/without/on/ignoring)."""
    found: list[str] = []
    labels_in_play: set[str] | None = set(TARGET_LABELS) | {"le", "__name__"}
    for name in sorted(metric_names(expr)):
        resolved = resolve(name, known)
        if resolved is None:
            found.append(f"{name}: no metric of that name (nor a histogram's _bucket/_sum/_count)")
            continue
        labels = resolved[1].labels
        labels_in_play = None if labels is None or labels_in_play is None else labels_in_play | labels
    for name, matchers in selectors(expr):
        resolved = resolve(name, known)
        if resolved is None or resolved[1].labels is None:
            continue
        allowed = resolved[1].labels | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        found += [f"{name}: no label {label!r}" for label in sorted(set(matchers) - allowed)]
    if labels_in_play is not None:
        for group in _GROUPING.findall(expr):
            named = {g.strip() for g in group.split(",") if g.strip()}
            found += [f"grouping by {label!r}, a label no metric here has" for label in sorted(named - labels_in_play)]
    return found


def panels() -> list[dict[str, Any]]:
    """The panels of the Grafana dashboard (rows left out, their collapsed panels in)."""
    board = json.loads(DASHBOARD.read_text())
    found = [p for p in board["panels"] if p["type"] != "row"]
    return found + [p for row in board["panels"] if row["type"] == "row" for p in row.get("panels", [])]


def alerts() -> list[dict[str, Any]]:
    """The alerting rules of deploy/prometheus/alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboard and the alerts, by where it is."""
    found = {f"panel {p['title']!r} {t['refId']}": t["expr"] for p in panels() for t in p["targets"]}
    return found | {f"alert {rule['alert']}": rule["expr"] for rule in alerts()}
