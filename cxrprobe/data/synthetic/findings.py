"""Planting findings into a synthetic chest: each returns masks or densities on the pixel grid.

Cardiomegaly is not drawn here: it is the patient's cardiothoracic ratio
(:func:`cxrprobe.data.synthetic.anatomy.sample_anatomy`). The others act on the lungs:
an effusion replaces air at the base under a meniscus, a pneumothorax collapses the lung away
from the chest wall behind a thin pleural line, a nodule or consolidation adds density inside
a lung.
"""

from __future__ import annotations

import numpy as np

from cxrprobe.data.synthetic.anatomy import (
    SIDES,
    Frame,
    PatientAnatomy,
    Pose,
    diaphragm_level,
    lung_distance,
    lung_geometry,
    soft_inside,
)


def effusion_fluid(
    rng: np.random.Generator,
    frame: Frame,
    anatomy: PatientAnatomy,
    pose: Pose,
    lungs: dict[int, np.ndarray],
) -> np.ndarray:
    """Pleural fluid at one or both lung bases (both in 60 % of cases): a level 30-55 % of the
    lung height up, rising towards the chest wall (the meniscus) and fading upwards, so the
    costophrenic angle and the dome vanish."""
    sides = SIDES if rng.random() < 0.6 else (SIDES[int(rng.integers(2))],)
    fluid = np.zeros_like(frame.u)
    for side in sides:
        centre, half = lung_geometry(anatomy, side)
        base = diaphragm_level(anatomy, pose, side)
        height = rng.uniform(0.3, 0.55) * (base - anatomy.lung_top)
        rise = rng.uniform(0.12, 0.25)
        towards_wall = np.clip((frame.u - centre) * side / (2 * half) + 0.5, 0.0, 1.0)
        level = base - height - rise * towards_wall**4
        fluid += np.clip((frame.v - level) / 0.1 + 0.3, 0.0, 1.0) * lungs[side]
    return np.clip(fluid, 0.0, 1.0)


def pneumothorax(
    rng: np.random.Generator,
    frame: Frame,
    anatomy: PatientAnatomy,
    pose: Pose,
    lungs: dict[int, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The air rim between chest wall and collapsed lung, and the visceral pleural line.

    One lung is shrunk by 20-45 % towards a point below its medial base, leaving an apical and
    lateral rim without vessels.
    """
    side = SIDES[int(rng.integers(2))]
    lung = lungs[side]
    collapse = rng.uniform(0.20, 0.45)
    centre, half = lung_geometry(anatomy, side)
    # Anchored at the medial edge below the base, so the rim is apical and lateral only.
    anchor_u = centre - side * half
    anchor_v = diaphragm_level(anatomy, pose, side) + 0.1
    keep = 1.0 - collapse
    shrunk = Frame(
        u=anchor_u + (frame.u - anchor_u) / keep,
        v=anchor_v + (frame.v - anchor_v) / keep,
        px=frame.px / keep,
    )
    inner = lung_distance(shrunk, anatomy, pose, side) * keep
    collapsed = soft_inside(inner, frame.px * 1.5)
    rim = lung * (1.0 - collapsed)
    line = np.exp(-((inner / (frame.px * 0.9)) ** 2)) * lung
    return rim, line


def nodule(
    rng: np.random.Generator, frame: Frame, anatomy: PatientAnatomy, pose: Pose
) -> np.ndarray:
    """A round opacity (sphere profile) inside a lung, 1.2 to 7 % of the image wide (a few
    pixels to a mass), sizes log-uniform."""
    radius = float(np.exp(rng.uniform(np.log(0.012), np.log(0.07))))
    u0, v0 = lung_site(rng, anatomy, pose, margin=radius)
    r2 = ((frame.u - u0) ** 2 + (frame.v - v0) ** 2) / radius**2
    return rng.uniform(0.35, 0.55) * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


def consolidation(
    rng: np.random.Generator,
    frame: Frame,
    anatomy: PatientAnatomy,
    pose: Pose,
    lungs: dict[int, np.ndarray],
) -> np.ndarray:
    """A large fuzzy patchy opacity confined to one lung (it stops at the pleura)."""
    side = SIDES[int(rng.integers(2))]
    u0, v0 = lung_site(rng, anatomy, pose, margin=0.04, side=side)
    ru, rv = (float(r) for r in rng.uniform(0.14, 0.26, 2))
    r2 = ((frame.u - u0) / ru) ** 2 + ((frame.v - v0) / rv) ** 2
    envelope = np.exp(-(r2**2))
    patches = _smooth_noise(rng, frame, cells=12)
    return rng.uniform(0.4, 0.55) * envelope * (0.35 + 0.9 * patches) * lungs[side]


def _smooth_noise(rng: np.random.Generator, frame: Frame, cells: int) -> np.ndarray:
    """Uniform noise on a ``cells`` x ``cells`` grid over the anatomical square [-1.2, 1.2]^2,
    bilinearly interpolated at each pixel of ``frame`` (so it moves with the patient)."""
    coarse = rng.random((cells + 1, cells + 1), dtype=np.float32)
    scale = cells / 2.4
    col = np.clip((frame.u + 1.2) * scale, 0.0, cells - 1e-3)
    row = np.clip((frame.v + 1.2) * scale, 0.0, cells - 1e-3)
    c0, r0 = col.astype(np.int32), row.astype(np.int32)
    fc, fr = col - c0.astype(np.float32), row - r0.astype(np.float32)
    top = coarse[r0, c0] * (1 - fc) + coarse[r0, c0 + 1] * fc
    bottom = coarse[r0 + 1, c0] * (1 - fc) + coarse[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def lung_site(
    rng: np.random.Generator,
    anatomy: PatientAnatomy,
    pose: Pose,
    *,
    margin: float,
    side: int | None = None,
) -> tuple[float, float]:
    """A random point at least ``margin`` inside a lung (rejection sampling on the analytic
    lung outline; falls back to the lung's centre, which is always inside)."""
    for _ in range(200):
        s = side if side is not None else SIDES[int(rng.integers(2))]
        centre, half = lung_geometry(anatomy, s)
        u = centre + rng.uniform(-half, half)
        v = rng.uniform(anatomy.lung_top, diaphragm_level(anatomy, pose, s))
        point = Frame(u=np.array([[u]]), v=np.array([[v]]), px=0.0)
        if lung_distance(point, anatomy, pose, s)[0, 0] < -min(margin, 0.5 * half):
            return float(u), float(v)
    centre, _ = lung_geometry(anatomy, side if side is not None else SIDES[0])
    return centre, (anatomy.lung_top + anatomy.diaphragm_level) / 2
