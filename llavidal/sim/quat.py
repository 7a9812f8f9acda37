"""Quaternion helpers in pybullet's (x, y, z, w) order, numpy only (no physics client needed)."""

from __future__ import annotations

import math

import numpy as np

AXES = {"x": np.array([1.0, 0.0, 0.0]), "y": np.array([0.0, 1.0, 0.0]), "z": np.array([0.0, 0.0, 1.0])}
IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def axis_angle(axis: str | np.ndarray, angle: float) -> np.ndarray:
    vector = AXES[axis] if isinstance(axis, str) else np.asarray(axis, dtype=np.float64)
    vector = vector / np.linalg.norm(vector)
    half = 0.5 * angle
    return np.array([*(vector * math.sin(half)), math.cos(half)])


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b first, then a)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def compose(*rotations: tuple[str, float]) -> np.ndarray:
    """``compose(("y", a), ("z", b))`` = R_y(a) * R_z(b): the last pair is applied first."""
    result = IDENTITY.copy()
    for axis, angle in rotations:
        result = multiply(result, axis_angle(axis, angle))
    return result


def normalize(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    a = normalize(np.asarray(a, dtype=np.float64))
    b = normalize(np.asarray(b, dtype=np.float64))
    dot = float(np.dot(a, b))
    if dot < 0.0:  # take the short way round
        b, dot = -b, -dot
    if dot > 0.9995:
        return normalize(a + t * (b - a))
    theta = math.acos(min(1.0, dot))
    sin_theta = math.sin(theta)
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / sin_theta


def rotate(q: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Rotate a 3-vector by the unit quaternion q."""
    # v + 2 u x (u x v + w v), written out: this runs per joint per frame and numpy's cross is slow
    x, y, z, w = (float(c) for c in q)
    vx, vy, vz = (float(c) for c in vector)
    cx = y * vz - z * vy + w * vx
    cy = z * vx - x * vz + w * vy
    cz = x * vy - y * vx + w * vz
    return np.array([vx + 2.0 * (y * cz - z * cy), vy + 2.0 * (z * cx - x * cz), vz + 2.0 * (x * cy - y * cx)])


def to_matrix(q: np.ndarray) -> np.ndarray:
    return np.stack([rotate(q, AXES[a]) for a in "xyz"], axis=1)


def mirror_z(q: np.ndarray) -> np.ndarray:
    """The rotation mirrored through the x-y plane (z -> -z): what a left-right swap does to a
    rotation expressed in the body frame (x forward, y up, z right)."""
    x, y, z, w = q
    return np.array([-x, -y, z, w])


def yaw_of(q: np.ndarray, forward: np.ndarray = AXES["x"]) -> float:
    """Heading (radians about world z) of the body's ``forward`` axis."""
    direction = rotate(q, forward)
    return math.atan2(direction[1], direction[0])


def from_matrix(matrix: np.ndarray) -> np.ndarray:
    """Unit quaternion of a 3x3 rotation matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    return normalize(np.array(q))
