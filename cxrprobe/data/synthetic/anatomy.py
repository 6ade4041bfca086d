"""Drawing a normal frontal chest radiograph as a density map, with numpy only.

Every structure is an analytic shape evaluated on the whole pixel grid at once (no per-pixel
loops). Shapes live in an *anatomical* frame ``(u, v)``: ``u`` runs from the viewer's left to
right (``u < 0`` is the patient's right side on a PA film), ``v`` from top to bottom, and the
thorax spans roughly ``u in [-0.75, 0.75]``, ``v in [-0.8, 0.45]``. A :class:`Pose` (rotation,
shift, magnification) maps image pixels into that frame, so moving or rotating the patient
moves every structure together.

The result is a density map (higher = more attenuating = brighter on the film); the caller adds
findings, converts density to intensity and adds blur and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VIEWS = ("PA", "AP")
SIDES = (-1, 1)
"""Lung sides in image terms: -1 is the viewer's left (patient's right on PA), +1 the right."""

_TEXTURE_BINS = 512


@dataclass(frozen=True)
class PatientAnatomy:
    """Patient-level body shape: the same for every image of one patient."""

    sex: str
    age: int
    body_half_width: float
    thorax_half_width: float
    mediastinum_half_width: float
    lung_top: float
    diaphragm_level: float
    dome_height: float
    ctr: float
    """Cardiothoracic ratio on a PA film: heart width over inner thoracic width."""
    heart_left_share: float
    """Share of the heart width on the viewer's right (the patient's left on PA)."""
    heart_shift: float
    """Horizontal offset of the heart's centre from the midline."""
    heart_top: float
    rib_start: float
    rib_spacing: float
    bone_density: float
    texture_seed: int


@dataclass(frozen=True)
class Pose:
    """Image-level acquisition: view, positioning and breathing."""

    view: str
    rotation: float
    shift_x: float
    shift_y: float
    scale: float
    inspiration: float
    """Vertical shift of the diaphragm (positive = lower = deeper breath)."""
    heart_magnification: float


@dataclass(frozen=True)
class Frame:
    """Anatomical coordinates of every pixel and the size of one pixel in that frame."""

    u: np.ndarray
    v: np.ndarray
    px: float


def sample_anatomy(
    rng: np.random.Generator,
    *,
    cardiomegaly: bool,
    sex: str | None = None,
    age: int | None = None,
) -> PatientAnatomy:
    """Draw one patient's body shape; ``cardiomegaly`` sets the cardiothoracic ratio range.

    Normal hearts get a PA ratio in [0.36, 0.47] and enlarged ones in [0.57, 0.76], so the two
    groups never overlap even after the AP magnification (at most x1.07) is applied.
    """
    sex = sex if sex is not None else ("M" if rng.random() < 0.5 else "F")
    age = int(age if age is not None else rng.integers(18, 91))
    body = rng.uniform(0.86, 0.94) if sex == "M" else rng.uniform(0.83, 0.91)
    if cardiomegaly:
        ctr = float(np.clip(rng.normal(0.66, 0.04), 0.57, 0.76))
    else:
        ctr = float(np.clip(rng.normal(0.42, 0.025), 0.36, 0.47))
    return PatientAnatomy(
        sex=sex,
        age=age,
        body_half_width=float(body),
        thorax_half_width=float(body * rng.uniform(0.80, 0.85)),
        mediastinum_half_width=float(rng.uniform(0.08, 0.11)),
        lung_top=float(rng.uniform(-0.75, -0.70)),
        diaphragm_level=float(rng.uniform(0.37, 0.43)),
        dome_height=float(rng.uniform(0.10, 0.15)),
        ctr=ctr,
        heart_left_share=float(rng.uniform(0.60, 0.68)),
        heart_shift=float(rng.uniform(-0.03, 0.03)),
        heart_top=float(rng.uniform(-0.12, -0.04)),
        rib_start=float(rng.uniform(-0.80, -0.74)),
        rib_spacing=float(rng.uniform(0.072, 0.085)),
        bone_density=float(np.clip(1.15 - 0.005 * (age - 20) + rng.normal(0, 0.05), 0.7, 1.2)),
        texture_seed=int(rng.integers(2**31)),
    )


def sample_pose(rng: np.random.Generator, view: str) -> Pose:
    """Draw positioning for one image; AP films are magnified, shallower and show a bigger heart."""
    ap = view == "AP"
    return Pose(
        view=view,
        rotation=float(np.deg2rad(rng.uniform(-4.0, 4.0))),
        shift_x=float(rng.uniform(-0.05, 0.05)),
        shift_y=float(rng.uniform(-0.04, 0.04)),
        scale=float(rng.uniform(0.94, 1.04) * (1.05 if ap else 1.0)),
        inspiration=float(rng.uniform(-0.02, 0.02) - (0.05 if ap else 0.0)),
        heart_magnification=float(rng.uniform(1.03, 1.07) if ap else 1.0),
    )


def make_frame(size: int, pose: Pose) -> Frame:
    """Anatomical ``(u, v)`` of each pixel centre of a ``size`` x ``size`` image."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    x = axis[None, :] - pose.shift_x
    y = axis[:, None] - pose.shift_y
    c, s = np.float32(np.cos(pose.rotation)), np.float32(np.sin(pose.rotation))
    u = (c * x + s * y) / pose.scale
    v = (-s * x + c * y) / pose.scale
    return Frame(u=u.astype(np.float32), v=v.astype(np.float32), px=2.0 / size / pose.scale)


def window(
    frame: Frame, pose: Pose, u_range: tuple[float, float], v_range: tuple[float, float]
) -> tuple[tuple[slice, slice], Frame]:
    """The pixels of a full-image ``frame`` that cover an anatomical box, and their sub-frame.

    Structures confined to a box are drawn on its sub-frame only and added back at the
    returned slices, which saves most of the work for small ones (spine, clavicles, nodules).
    """
    size = frame.u.shape[0]
    c, s = np.cos(pose.rotation), np.sin(pose.rotation)
    u = np.array([u_range[0], u_range[0], u_range[1], u_range[1]])
    v = np.array([v_range[0], v_range[1], v_range[0], v_range[1]])
    cols = (pose.shift_x + pose.scale * (c * u - s * v) + 1.0) * (size / 2)
    rows = (pose.shift_y + pose.scale * (s * u + c * v) + 1.0) * (size / 2)
    box = (_pixel_span(rows, size), _pixel_span(cols, size))
    return box, Frame(u=frame.u[box], v=frame.v[box], px=frame.px)


def _pixel_span(edges: np.ndarray, size: int) -> slice:
    """Pixel indices covering the span of ``edges`` (pixel units) plus one, within the image."""
    start = min(max(math.floor(edges.min()) - 1, 0), size)
    return slice(start, min(max(math.ceil(edges.max()) + 1, start), size))


def soft_inside(distance: np.ndarray, width: float) -> np.ndarray:
    """1 inside (negative distance), 0 outside, with a linear edge ``width`` wide."""
    inside = distance * np.float32(-1.0 / width)
    inside += 0.5
    return np.clip(inside, 0.0, 1.0, out=inside)


def ellipse_distance(du: np.ndarray, dv: np.ndarray, a, b) -> np.ndarray:
    """Approximate signed distance to an ellipse with semi-axes ``a`` and ``b``."""
    scale = np.asarray(np.minimum(a, b), dtype=np.float32)
    radius = np.square(du / a)
    radius += np.square(dv / b)
    np.sqrt(radius, out=radius)
    radius -= 1.0
    radius *= scale
    return radius


def diaphragm_level(anatomy: PatientAnatomy, pose: Pose, side: int) -> float:
    """Height of one hemidiaphragm at the lateral chest wall; the patient's right sits higher."""
    right_higher = 0.03 if side == -1 else 0.0
    return anatomy.diaphragm_level + pose.inspiration - right_higher


def lung_geometry(anatomy: PatientAnatomy, side: int) -> tuple[float, float]:
    """Centre ``u`` and half-width of one lung."""
    half = (anatomy.thorax_half_width - anatomy.mediastinum_half_width) / 2
    return side * (anatomy.mediastinum_half_width + half), half


def lung_distance(frame: Frame, anatomy: PatientAnatomy, pose: Pose, side: int) -> np.ndarray:
    """Signed distance to one lung: rounded apex, straight lateral wall, domed base.

    The dome falls to the wall level at the lung's edges, so the lateral costophrenic angle is
    sharp in a normal lung (an effusion fills and blunts it).
    """
    u, v = frame.u, frame.v
    centre, half = lung_geometry(anatomy, side)
    base = diaphragm_level(anatomy, pose, side)
    top_of_wall = base - anatomy.dome_height - 0.04
    du = u - centre
    # Below the top of the wall the ellipse is held at its widest: straight vertical walls.
    above_wall = np.minimum(v - top_of_wall, 0.0)
    shape = ellipse_distance(du, above_wall, half, top_of_wall - anatomy.lung_top)
    dome = base - anatomy.dome_height * (1.0 - (du / half) ** 2)
    return np.maximum(shape, v - dome)


def lung_air(distance: np.ndarray, half_width: float) -> np.ndarray:
    """Air path length through a lung: zero at its edge, rising inwards like a rounded body."""
    return np.sqrt(np.clip(-distance / (0.35 * half_width), 0.0, 1.0))


def gastric_bubble(frame: Frame, anatomy: PatientAnatomy, pose: Pose) -> np.ndarray:
    """Air in the stomach under the left hemidiaphragm (the viewer's right on a PA film)."""
    centre, half = lung_geometry(anatomy, 1)
    top = diaphragm_level(anatomy, pose, 1) - anatomy.dome_height + 0.06
    du, dv = frame.u - (centre + 0.1 * half), frame.v - top - 0.05
    return soft_inside(ellipse_distance(du, dv, 0.1, 0.05), frame.px * 2) * (dv > -0.05)


def diaphragm_surface(frame: Frame, anatomy: PatientAnatomy, pose: Pose) -> np.ndarray:
    """``v`` of the diaphragm under each column: the higher of the two domes."""
    surfaces = []
    for side in SIDES:
        centre, half = lung_geometry(anatomy, side)
        du = frame.u - centre
        surfaces.append(
            diaphragm_level(anatomy, pose, side) - anatomy.dome_height * (1.0 - (du / half) ** 2)
        )
    return np.minimum(surfaces[0], surfaces[1])


def body_thickness(frame: Frame, anatomy: PatientAnatomy) -> np.ndarray:
    """Soft-tissue path length (0 outside the body, about 1 in the centre of the chest).

    The torso is a rounded box filling the film's width, narrowing slightly towards the
    shoulders, with thickness thinning towards the flanks.
    """
    u, v = frame.u, frame.v
    half = anatomy.body_half_width * (1.0 - 0.06 * np.clip(-v - 0.3, 0.0, 2.0))
    across = np.abs(u / half)
    along = ((v - 0.2) / 1.35) ** 2
    inside = np.clip(1.0 - across * across * across - along * along * along, 0.0, 1.0)
    return np.sqrt(inside) * soft_inside(-inside, 0.02)


def heart_shape(anatomy: PatientAnatomy, pose: Pose) -> tuple[float, float, float, float]:
    """Left and right extent from the heart's centre, centre height and half height.

    The heart's width is ``ctr`` times the inner thoracic width (times the AP magnification),
    most of it on the viewer's right, resting on the diaphragm; enlarged hearts are rounder as
    well as wider (the top rises with the ratio).
    """
    width = anatomy.ctr * 2 * anatomy.thorax_half_width * pose.heart_magnification
    right = anatomy.heart_left_share * width
    centre_v = anatomy.diaphragm_level + pose.inspiration - 0.02
    half_height = centre_v - anatomy.heart_top + anatomy.ctr - 0.42
    return width - right, right, centre_v, half_height


def heart_box(anatomy: PatientAnatomy, pose: Pose) -> tuple[tuple[float, float], ...]:
    """Anatomical ``(u_range, v_range)`` holding the cardiac silhouette."""
    left, right, centre_v, half_height = heart_shape(anatomy, pose)
    u0 = anatomy.heart_shift
    return (u0 - left - 0.03, u0 + right + 0.03), (centre_v - half_height - 0.03, centre_v + 0.3)


def heart(frame: Frame, anatomy: PatientAnatomy, pose: Pose, diaphragm: np.ndarray) -> np.ndarray:
    """The cardiac silhouette (denser in its middle), cut off by the diaphragm below."""
    edge = frame.px * 2.0
    left, right, centre_v, half_height = heart_shape(anatomy, pose)
    du = frame.u - anatomy.heart_shift
    semi_u = np.float32(left) + np.float32(right - left) * (du > 0)
    inside = ellipse_distance(du, frame.v - centre_v, semi_u, half_height)
    depth = np.sqrt(np.clip(inside * np.float32(-1 / 0.12), 0.0, 1.0))
    depth *= 0.25
    depth += 0.75
    depth *= soft_inside(inside, edge)
    depth *= soft_inside(frame.v - diaphragm - 0.02, edge)
    return depth


def mediastinum(frame: Frame, anatomy: PatientAnatomy, pose: Pose) -> np.ndarray:
    """The mediastinal band above the heart, widening downwards, with the aortic knob."""
    u, v = frame.u, frame.v
    edge = frame.px * 2.0
    mw = anatomy.mediastinum_half_width
    band = soft_inside(np.abs(u - 0.01) - mw * (0.8 + 0.25 * (v + 1.0)), edge)
    band *= soft_inside(v - heart_shape(anatomy, pose)[2], edge)
    knob = soft_inside(ellipse_distance(u - (mw + 0.02), v + 0.38, 0.065, 0.055), edge)
    return np.maximum(band, knob, out=band)


def trachea(frame: Frame) -> np.ndarray:
    """Air column of the trachea down to the carina."""
    return soft_inside(np.abs(frame.u + 0.005) - 0.022, frame.px * 2) * soft_inside(
        frame.v + 0.3, frame.px * 4
    )


def ribs(frame: Frame, anatomy: PatientAnatomy) -> np.ndarray:
    """Posterior ribs (curved bands widening downwards) and fainter anterior ribs.

    A rib coordinate is computed for every pixel at once and the bands are its fractional part,
    so all twelve ribs on both sides cost a handful of array operations.
    """
    u, v = frame.u, frame.v
    w = np.abs(u)
    tw = anatomy.thorax_half_width
    lateral = soft_inside(w - (tw + 0.05), 0.04) * soft_inside(0.07 - w, 0.02)

    along = v - (-0.3 * w + 0.75 * w**2)
    k = _rib_index(along - anatomy.rib_start, anatomy.rib_spacing, growth=0.003)
    posterior = _band_profile(k, fill=0.4) * (k >= 0) * (k < 11)

    along_ant = v + 0.35 * w - 0.08
    k_ant = _rib_index(along_ant - anatomy.rib_start, anatomy.rib_spacing * 1.3, growth=0.003)
    anterior = _band_profile(k_ant, fill=0.35) * (k_ant >= 0) * (k_ant < 7) * (w > 0.28)
    return (posterior + 0.45 * anterior) * lateral


def _rib_index(t: np.ndarray, spacing: float, growth: float) -> np.ndarray:
    """Continuous rib number at distance ``t`` below the first rib when the gap between ribs
    grows by ``2 * growth`` per rib (the inverse of ``t = spacing*k + growth*k**2``)."""
    grown = (np.sqrt(spacing**2 + 4 * growth * np.clip(t, 0.0, 10.0)) - spacing) / (2 * growth)
    return grown - (t < 0)


def _band_profile(k: np.ndarray, fill: float) -> np.ndarray:
    """A bone seen edge-on: a rounded band occupying ``fill`` of each period with bright cortex."""
    x = k - np.floor(k)
    x *= 2.0 / fill
    x -= 1.0
    np.abs(x, out=x)
    body = np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
    x -= 0.85
    x *= 1 / 0.12
    cortex = np.exp(-x * x)
    cortex[x > 2.0] = 0.0
    body *= 0.6
    body += 0.4 * cortex
    return body


def clavicles(frame: Frame, pose: Pose) -> np.ndarray:
    """Two S-shaped clavicles from the sternal notch to the shoulders, higher and flatter on AP."""
    w = np.abs(frame.u)
    lift = 0.05 if pose.view == "AP" else 0.0
    slope = 0.06 if pose.view == "AP" else 0.14
    x = w - 0.08
    centre = -0.68 - lift - slope * x + 0.03 * np.sin(2 * np.pi * x / 0.55)
    across = (frame.v - centre) / (0.03 + 0.015 * np.clip(0.2 - x, 0.0, 1.0) / 0.2)
    span = soft_inside(w - 0.62, 0.05) * soft_inside(0.07 - w, 0.02)
    return np.sqrt(np.clip(1.0 - across**2, 0.0, 1.0)) * span


def spine(frame: Frame) -> np.ndarray:
    """Vertebral column: a midline band with vertebral bodies and pedicles."""
    u, v = frame.u, frame.v
    band = soft_inside(np.abs(u) - 0.065, frame.px * 2)
    bodies = 0.75 + 0.25 * np.cos(2 * np.pi * (v + 1.0) / 0.085)
    pedicles = np.exp(-(((np.abs(u) - 0.045) / 0.01) ** 2)) * (0.5 + 0.5 * bodies)
    return band * bodies + 0.4 * pedicles


def lung_markings(frame: Frame, anatomy: PatientAnatomy) -> np.ndarray:
    """Vessels radiating from each hilum, fading towards the periphery.

    A per-patient table of vessel angles is looked up with a radius-dependent wiggle, so the
    pattern is the same across a patient's images.
    """
    table_rng = np.random.default_rng(anatomy.texture_seed)
    table = (table_rng.random(_TEXTURE_BINS) < 0.22) * table_rng.uniform(0.4, 1.0, _TEXTURE_BINS)
    table = 0.5 * table + 0.25 * (np.roll(table, 1) + np.roll(table, -1))
    table = table.astype(np.float32)
    phase = table_rng.uniform(0, 2 * np.pi)
    right = frame.u >= 0
    side = right.astype(np.float32) * 2 - 1
    du = frame.u * side - (anatomy.mediastinum_half_width + 0.07)
    dv = frame.v + 0.1
    r = np.sqrt(du**2 + dv**2)
    angle = np.arctan2(dv, du) + 0.1 * np.sin(14 * r + phase * side)
    # The right lung reads the other half of the table; & wraps like a modulo (power of two).
    index = (angle * (_TEXTURE_BINS / (2 * np.pi))).astype(np.int32) + right * (_TEXTURE_BINS // 2)
    vessels = np.take(table, index & (_TEXTURE_BINS - 1))
    hilum = np.exp(-((du / 0.06) ** 2 + (dv / 0.1) ** 2))
    return vessels * np.exp(-r / 0.3) + 0.8 * hilum


def breasts(frame: Frame, anatomy: PatientAnatomy) -> np.ndarray:
    """Breast shadows over the lower zones, with a sharper lower contour."""
    total = np.zeros_like(frame.u)
    for side in SIDES:
        du = (frame.u - side * 0.45 * anatomy.body_half_width) / 0.3
        dv = (frame.v - anatomy.diaphragm_level + 0.12) / 0.22
        total += np.sqrt(np.clip(1.0 - du**2 - dv**2, 0.0, 1.0))
    return total
