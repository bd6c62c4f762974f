"""Which points of a distortion–perception comparison no other point beats on both axes.

A point (distortion d, perception p; lower is better on both) is *dominated* by another with
d' ≤ d and p' ≤ p, one of them strictly. The points nobody dominates are the frontier: the
settings a user could rationally pick. docs/RESULTS.md §4 reads the full images run this way
("where the λ curve dominates the baselines and where it does not", issue #6), and
``dpfast reproduce images --status`` prints it, so the reading is computed, not eyeballed.
"""
from __future__ import annotations

import math
from typing import Sequence


def dominated_by(points: Sequence[tuple[str, float, float]]) -> dict[str, list[str]]:
    """For each labelled point ``(label, distortion, perception)``, the labels of the points
    that dominate it, in the given order; an empty list marks a frontier point.

    Exact comparisons (no tolerance): two points equal on both axes do not dominate each
    other. Labels must be unique and the values finite.

    >>> dominated_by([("a", 1.0, 1.0), ("b", 2.0, 2.0), ("c", 0.5, 3.0)])
    {'a': [], 'b': ['a'], 'c': []}
    """
    labels = [label for label, _, _ in points]
    if len(set(labels)) != len(labels):
        raise ValueError(f"points: labels must be unique, got {labels}")
    for label, distortion, perception in points:
        if not (math.isfinite(distortion) and math.isfinite(perception)):
            raise ValueError(f"points: {label!r} has ({distortion}, {perception}); expected finite values")
    return {label: [other for other, d, p in points
                    if d <= distortion and p <= perception and (d < distortion or p < perception)]
            for label, distortion, perception in points}
