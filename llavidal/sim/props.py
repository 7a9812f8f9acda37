"""Props built from boxes (and a few pybullet_data models): furniture and hand-held objects.

Every prop is a list of coloured boxes in its own frame (z up, origin at the centre of its bounding
box), so the renderer needs no meshes and the 3D box of any prop is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12), "green": (0.15, 0.65, 0.2), "blue": (0.15, 0.35, 0.9),
    "yellow": (0.95, 0.8, 0.1), "orange": (0.95, 0.5, 0.1), "purple": (0.55, 0.25, 0.7),
    "white": (0.95, 0.95, 0.95), "black": (0.08, 0.08, 0.08), "brown": (0.5, 0.3, 0.15),
    "pink": (0.95, 0.5, 0.65), "teal": (0.1, 0.6, 0.6), "grey": (0.55, 0.55, 0.55),
}
WOOD = (0.55, 0.38, 0.22)


@dataclass(frozen=True)
class Box:
    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    colour: tuple[float, float, float]


@dataclass(frozen=True)
class PropModel:
    """A prop class: its boxes (as a function of colour) and its half extents."""

    name: str
    boxes: tuple[Box, ...]

    @property
    def half_extents(self) -> np.ndarray:
        low = np.min([np.subtract(b.centre, b.half) for b in self.boxes], axis=0)
        high = np.max([np.add(b.centre, b.half) for b in self.boxes], axis=0)
        return (high - low) / 2.0

    def corners(self) -> np.ndarray:
        """(8, 3) corners of the bounding box in the prop frame."""
        low = np.min([np.subtract(b.centre, b.half) for b in self.boxes], axis=0)
        high = np.max([np.add(b.centre, b.half) for b in self.boxes], axis=0)
        return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])


def hand_object(kind: str, colour: tuple[float, float, float]) -> PropModel:
    """Hand-held objects, sized for the hand (about 8 cm ball)."""
    if kind == "mug":
        body = Box((0, 0, 0), (0.04, 0.04, 0.05), colour)
        handle = Box((0.0, 0.055, 0.0), (0.008, 0.015, 0.03), colour)
        return PropModel("mug", (body, handle))
    if kind == "bottle":
        body = Box((0, 0, -0.02), (0.035, 0.035, 0.08), colour)
        neck = Box((0, 0, 0.08), (0.015, 0.015, 0.03), (0.9, 0.9, 0.9))
        return PropModel("bottle", (body, neck))
    if kind == "book":
        # the covers enclose the pages, whose edge shows on the open side: the colour named is the one seen
        cover = Box((0, 0, 0), (0.11, 0.017, 0.15), colour)
        pages = Box((0.007, 0.0, 0.0), (0.104, 0.015, 0.145), (0.97, 0.95, 0.88))
        return PropModel("book", (pages, cover))
    if kind == "phone":
        # a screen on about a third of the front, so that the case's colour shows from the front too
        return PropModel("phone", (Box((0, 0, 0), (0.038, 0.01, 0.075), colour),
                                   Box((0, -0.011, 0.005), (0.022, 0.002, 0.045), (0.1, 0.1, 0.15))))
    if kind == "box":
        return PropModel("box", (Box((0, 0, 0), (0.06, 0.06, 0.06), colour),))
    if kind == "apple":
        return PropModel("apple", (Box((0, 0, 0), (0.035, 0.035, 0.035), colour),
                                   Box((0, 0, 0.04), (0.004, 0.004, 0.01), (0.35, 0.2, 0.1))))
    if kind == "food":
        return PropModel("food", (Box((0, 0, 0), (0.025, 0.025, 0.02), colour),))
    raise KeyError(f"unknown hand-held object {kind!r}")


HAND_OBJECTS = ("mug", "bottle", "book", "phone", "box", "apple")
DRINKABLE = ("mug", "bottle")


def table(top_height: float, size_x: float, size_y: float, colour=WOOD) -> PropModel:
    """A table whose top surface is at ``top_height`` above the floor; origin at the top's centre."""
    thickness = 0.03
    leg = 0.025
    boxes = [Box((0, 0, -thickness / 2), (size_x / 2, size_y / 2, thickness / 2), colour)]
    leg_half_height = (top_height - thickness) / 2
    for sx in (-1, 1):
        for sy in (-1, 1):
            boxes.append(Box((sx * (size_x / 2 - leg), sy * (size_y / 2 - leg), -thickness - leg_half_height),
                             (leg, leg, leg_half_height), colour))
    return PropModel("table", tuple(boxes))


def chair(seat_height: float, colour=WOOD) -> PropModel:
    """A chair facing +x; origin at the centre of the seat's top surface."""
    seat_half = 0.21
    thickness = 0.03
    leg = 0.02
    boxes = [Box((0, 0, -thickness / 2), (seat_half, seat_half, thickness / 2), colour)]
    leg_half_height = (seat_height - thickness) / 2
    for sx in (-1, 1):
        for sy in (-1, 1):
            boxes.append(Box((sx * (seat_half - leg), sy * (seat_half - leg), -thickness - leg_half_height),
                             (leg, leg, leg_half_height), colour))
    boxes.append(Box((-seat_half + 0.015, 0, 0.25), (0.015, seat_half, 0.25), colour))  # backrest
    return PropModel("chair", tuple(boxes))


def tray(colour) -> PropModel:
    """A flat tray; origin at the centre of its floor."""
    base = Box((0, 0, 0.005), (0.14, 0.1, 0.005), colour)
    rims = (Box((0.14, 0, 0.02), (0.005, 0.1, 0.02), colour), Box((-0.14, 0, 0.02), (0.005, 0.1, 0.02), colour),
            Box((0, 0.1, 0.02), (0.14, 0.005, 0.02), colour), Box((0, -0.1, 0.02), (0.14, 0.005, 0.02), colour))
    return PropModel("tray", (base, *rims))
