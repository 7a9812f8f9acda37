"""The hand-held props show the colour the world's metadata names (the colour questions are asked of it)."""

from __future__ import annotations

import numpy as np
import pytest

from llavidal.sim.props import COLOURS, HAND_OBJECTS, hand_object


def visible_colour_share(kind: str, colour: tuple[float, float, float], axis: int, sign: int, grid: int = 120) -> float:
    """Share of a prop's silhouette seen along ``axis`` from the ``sign`` side (orthographic, first box hit)
    that shows ``colour``."""
    model = hand_object(kind, colour)
    u, v = [a for a in range(3) if a != axis]
    low = np.min([np.subtract(b.centre, b.half) for b in model.boxes], axis=0)
    high = np.max([np.add(b.centre, b.half) for b in model.boxes], axis=0)
    us = np.linspace(low[u], high[u], grid + 2)[1:-1]
    vs = np.linspace(low[v], high[v], grid + 2)[1:-1]
    U, V = np.meshgrid(us, vs, indexing="ij")
    depth = np.full(U.shape, np.inf)
    shows = np.zeros(U.shape, dtype=bool)
    for box in model.boxes:
        c, h = np.asarray(box.centre), np.asarray(box.half)
        inside = (np.abs(U - c[u]) <= h[u]) & (np.abs(V - c[v]) <= h[v])
        entry = -sign * (c[axis] + sign * h[axis])  # distance from the viewer's side: nearer is smaller
        nearer = inside & (entry < depth)
        depth[nearer] = entry
        shows[nearer] = tuple(box.colour) == tuple(colour)
    covered = np.isfinite(depth)
    return float(shows[covered].mean())


@pytest.mark.parametrize("kind", HAND_OBJECTS)
def test_the_named_colour_is_what_the_broad_sides_show(kind):
    colour = COLOURS["purple"]
    model = hand_object(kind, colour)
    extents = model.half_extents
    # the two sides of largest area: viewed along the axis of the smallest extent
    thin = int(np.argmin(extents))
    for sign in (-1, 1):
        share = visible_colour_share(kind, colour, thin, sign)
        assert share >= 0.6, f"a {kind} seen from its broad side ({'-+'[sign > 0]}{'xyz'[thin]}) shows its colour on {share:.0%}"
    overall = np.mean([visible_colour_share(kind, colour, axis, sign) for axis in range(3) for sign in (-1, 1)])
    assert overall >= 0.6, f"a {kind} shows its colour on {overall:.0%} of its six views"
