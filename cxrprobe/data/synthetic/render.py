"""Composing a synthetic chest: anatomy and planted findings into a density map, then a film.

:func:`chest_density` adds the structures of :mod:`~cxrprobe.data.synthetic.anatomy` and the
findings of :mod:`~cxrprobe.data.synthetic.findings` with their attenuation weights, drawing
each structure only inside the window that can hold it. :func:`expose` turns density into a
16-bit image with random exposure, contrast, heel effect, blur and noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from cxrprobe.data.synthetic import anatomy as anat
from cxrprobe.data.synthetic import findings as find


def chest_density(
    frame: anat.Frame,
    anatomy: anat.PatientAnatomy,
    pose: anat.Pose,
    planted: Mapping[str, np.random.Generator],
) -> np.ndarray:
    """Projected density (float32, brighter = denser) of the chest with the ``planted``
    findings (name -> the random stream that places it; cardiomegaly lives in ``anatomy``).

    Structures confined to a region are drawn inside its window only (see
    :func:`~cxrprobe.data.synthetic.anatomy.window`).
    """
    thickness = anat.body_thickness(frame, anatomy)
    diaphragm = anat.diaphragm_surface(frame, anatomy, pose)
    tw, lowest = anatomy.thorax_half_width, anat.diaphragm_level(anatomy, pose, 1)
    heart, mediastinum = np.zeros_like(frame.u), np.zeros_like(frame.u)
    box, sub = anat.window(frame, pose, *anat.heart_box(anatomy, pose))
    heart[box] = anat.heart(sub, anatomy, pose, diaphragm[box])
    box, sub = anat.window(frame, pose, (-0.25, 0.3), (-2.0, lowest))
    mediastinum[box] = anat.mediastinum(sub, anatomy, pose)

    air, markings, extra = (np.zeros_like(frame.u) for _ in range(3))
    box, thorax = anat.window(frame, pose, (-tw - 0.05, tw + 0.05), (-1.0, lowest + 0.05))
    air[box], markings[box], extra[box] = _lung_fields(thorax, anatomy, pose, planted)
    air *= (1.0 - 0.85 * heart) * (1.0 - mediastinum)

    bones = np.zeros_like(frame.u)
    box, ribs = anat.window(frame, pose, (-tw - 0.12, tw + 0.12), (-1.0, lowest + 0.45))
    above = anat.soft_inside(ribs.v - diaphragm[box], 0.08)
    bones[box] += 0.17 * anat.ribs(ribs, anatomy) * (0.35 + 0.65 * above)
    box, neck = anat.window(frame, pose, (-0.7, 0.7), (-1.0, -0.5))
    bones[box] += 0.35 * anat.clavicles(neck, pose)
    box, column = anat.window(frame, pose, (-0.09, 0.09), (-2.0, 2.0))
    bones[box] += 0.15 * anat.spine(column)

    gas = np.zeros_like(frame.u)
    box, airway = anat.window(frame, pose, (-0.05, 0.05), (-2.0, -0.25))
    gas[box] += 0.4 * anat.trachea(airway)
    box, stomach = anat.window(frame, pose, (0.0, tw + 0.1), (lowest - 0.2, lowest + 0.25))
    gas[box] += 0.25 * anat.gastric_bubble(stomach, anatomy, pose)

    # density = 0.85 t + 0.3 max(heart, mediastinum) + 0.35 markings * air
    #           - (0.7 air + gas) t + (bone_density * bones + findings) [t > 0.05],
    # accumulated in place (t: soft-tissue thickness): fewer full-size temporaries.
    density = 0.85 * thickness
    if anatomy.sex == "F":
        box, chest = anat.window(frame, pose, (-1.0, 1.0), (lowest - 0.45, lowest + 0.2))
        density[box] += 0.1 * anat.breasts(chest, anatomy)
    density += 0.3 * np.maximum(heart, mediastinum, out=heart)
    markings *= 0.35 * air
    density += markings
    air *= 0.7
    air += gas
    air *= thickness
    density -= air
    bones *= anatomy.bone_density
    bones += extra
    bones *= thickness > 0.05
    density += bones
    return density


def _lung_fields(
    frame: anat.Frame,
    anatomy: anat.PatientAnatomy,
    pose: anat.Pose,
    planted: Mapping[str, np.random.Generator],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Air, vessel markings and finding densities over a window covering both lungs."""
    distances = {side: anat.lung_distance(frame, anatomy, pose, side) for side in anat.SIDES}
    lungs = {side: anat.soft_inside(d, frame.px * 1.5) for side, d in distances.items()}
    half_width = anat.lung_geometry(anatomy, 1)[1]
    air = sum(lungs[s] * anat.lung_air(distances[s], half_width) for s in anat.SIDES)
    markings = anat.lung_markings(frame, anatomy)
    extra = np.zeros_like(frame.u)
    if "pleural_effusion" in planted:
        fluid = find.effusion_fluid(planted["pleural_effusion"], frame, anatomy, pose, lungs)
        air *= 1.0 - fluid
        extra += 0.2 * fluid
    if "pneumothorax" in planted:
        rim, line = find.pneumothorax(planted["pneumothorax"], frame, anatomy, pose, lungs)
        markings *= 1.0 - rim
        extra += 0.22 * line - 0.08 * rim
    if "nodule_mass" in planted:
        extra += find.nodule(planted["nodule_mass"], frame, anatomy, pose)
    if "consolidation" in planted:
        extra += find.consolidation(planted["consolidation"], frame, anatomy, pose, lungs)
    return air, markings, extra


def expose(rng: np.random.Generator, density: np.ndarray) -> np.ndarray:
    """Turn density into a 16-bit film: random exposure, contrast, heel effect, blur, noise."""
    size = density.shape[0]
    transmitted = np.clip(density, 0.0, 10.0)
    transmitted *= -rng.uniform(1.3, 1.8)
    intensity = 1.0 - np.exp(transmitted, out=transmitted)
    intensity **= rng.uniform(0.85, 1.2)
    heel = 1.0 + rng.uniform(-0.06, 0.06) * np.linspace(-1.0, 1.0, size, dtype=np.float32)
    intensity *= heel[:, None] if rng.random() < 0.5 else heel[None, :]
    intensity = ndimage.gaussian_filter(intensity, rng.uniform(0.5, 1.0) * size / 256)
    noise = rng.standard_normal(intensity.shape, dtype=np.float32)
    noise *= rng.uniform(0.01, 0.03)
    noise *= np.sqrt(intensity + 0.02)
    intensity += noise
    low, high = rng.uniform(0, 3000), rng.uniform(30000, 65535)
    np.clip(intensity, 0.0, 1.0, out=intensity)
    intensity *= high - low
    intensity += low
    return np.rint(intensity, out=intensity).astype(np.uint16)
