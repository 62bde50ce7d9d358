"""A tiny parser of Prometheus' text exposition format (0.0.4), for tests.

Strict where our output must be: every sample's family has a ``# TYPE``
line before it, counters end in ``_total``, no family or series twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Metrics:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def by(self, name: str, label: str) -> dict[str, float]:
        """``{label value: sample}`` for one family."""
        return {
            dict(labels)[label]: value
            for (n, labels), value in self.samples.items()
            if n == name
        }


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def _labels(text: str) -> Labels:
    labels: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match is not None, f"bad labels: {text!r}"
        labels.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    return tuple(sorted(labels))


def parse(text: str) -> Metrics:
    assert text.endswith("\n"), "the exposition must end with a line feed"
    metrics = Metrics()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in metrics.helps, f"HELP twice for {name}"
            metrics.helps[name] = help_
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in _TYPES, line
            assert name not in metrics.types, f"TYPE twice for {name}"
            if kind == "counter":
                assert name.endswith("_total"), f"counter {name} lacks _total"
            metrics.types[name] = kind
        elif line.startswith("#"):
            continue
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"bad sample line: {line!r}"
            name, labels, value = match.groups()
            assert name in metrics.types, f"{name} has no TYPE before its samples"
            key = (name, _labels(labels or ""))
            assert key not in metrics.samples, f"series twice: {line}"
            metrics.samples[key] = float(value)
    return metrics
