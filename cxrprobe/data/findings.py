"""The canonical finding vocabulary every manifest column is named by.

Each dataset's own label names map onto these ids through the JSON label maps in
``cxrprobe/data/label_maps/``; the order here is the order of finding columns in every manifest.

Some findings are *derived*: ``nodule_mass`` is the merge of ``nodule`` and ``mass``, and each
sided finding (``pleural_effusion_left``/``_right``, as in bedside sets graded per side) merges into
its unsided one. A dataset that provides all parts of a derived finding also provides it (see
``labelmap.add_derived``); one that merges them in its own labels (VinDr's "Nodule/Mass") provides
only the derived finding.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrprobe.errors import ConfigError


@dataclass(frozen=True)
class Finding:
    """One canonical finding: a stable id (a manifest column name), a display name and a gloss."""

    id: str
    name: str
    description: str
    derived_from: tuple[str, ...] = ()


FINDINGS: tuple[Finding, ...] = (
    Finding("no_finding", "No finding", "Normal study: no abnormality reported."),
    Finding(
        "enlarged_cardiomediastinum",
        "Enlarged cardiomediastinum",
        "Widened cardiac and mediastinal silhouette.",
    ),
    Finding("cardiomegaly", "Cardiomegaly", "Enlarged heart (cardiothoracic ratio above 0.5)."),
    Finding("aortic_enlargement", "Aortic enlargement", "Enlarged, elongated or tortuous aorta."),
    Finding(
        "aortic_elongation",
        "Aortic elongation",
        "Elongated (unfolded) aorta, as PadChest reports it; also counts as aortic_enlargement.",
    ),
    Finding("enlarged_pa", "Enlarged pulmonary artery", "Dilated main pulmonary artery."),
    Finding("mediastinal_shift", "Mediastinal shift", "Displacement of the mediastinum."),
    Finding("lung_opacity", "Lung opacity", "Any area of increased lung attenuation."),
    Finding("lung_lesion", "Lung lesion", "Focal lung abnormality (nodule, mass, cavity...)."),
    Finding(
        "nodule_mass",
        "Nodule/mass",
        "Rounded opacity: nodule (<3 cm) or mass (>=3 cm).",
        derived_from=("nodule", "mass"),
    ),
    Finding("nodule", "Nodule", "Rounded opacity up to 3 cm, single or multiple."),
    Finding("mass", "Mass", "Rounded opacity larger than 3 cm."),
    Finding("lung_tumor", "Lung tumour", "Primary or metastatic lung neoplasm."),
    Finding("consolidation", "Consolidation", "Alveolar air replaced by fluid or tissue."),
    Finding(
        "pneumonia",
        "Pneumonia",
        "Infection of the lung parenchyma (pneumonic infiltrates).",
        derived_from=("pneumonia_left", "pneumonia_right"),
    ),
    Finding("pneumonia_left", "Pneumonia (left)", "Pneumonic infiltrates in the left lung."),
    Finding("pneumonia_right", "Pneumonia (right)", "Pneumonic infiltrates in the right lung."),
    Finding("infiltration", "Infiltration", "Infiltrates: ill-defined parenchymal opacities."),
    Finding(
        "atelectasis",
        "Atelectasis",
        "Partial or complete collapse of lung tissue.",
        derived_from=("atelectasis_left", "atelectasis_right"),
    ),
    Finding("atelectasis_left", "Atelectasis (left)", "Atelectasis in the left lung."),
    Finding("atelectasis_right", "Atelectasis (right)", "Atelectasis in the right lung."),
    Finding("edema", "Edema", "Pulmonary oedema (interstitial or alveolar fluid)."),
    Finding(
        "congestion",
        "Congestion",
        "Pulmonary venous congestion: vascular redistribution, hilar congestion.",
    ),
    Finding(
        "pleural_effusion",
        "Pleural effusion",
        "Fluid in the pleural space.",
        derived_from=("pleural_effusion_left", "pleural_effusion_right"),
    ),
    Finding("pleural_effusion_left", "Pleural effusion (left)", "Fluid in the left pleural space."),
    Finding(
        "pleural_effusion_right", "Pleural effusion (right)", "Fluid in the right pleural space."
    ),
    Finding("pleural_thickening", "Pleural thickening", "Thickened pleura, including apical caps."),
    Finding("pleural_other", "Pleural other", "Other pleural abnormality (plaques, fibrosis)."),
    Finding("pneumothorax", "Pneumothorax", "Air in the pleural space."),
    Finding("emphysema", "Emphysema", "Hyperinflation with destroyed alveolar walls."),
    Finding("copd", "COPD", "Signs of chronic obstructive pulmonary disease."),
    Finding("fibrosis", "Fibrosis", "Pulmonary fibrosis: scarring of lung tissue."),
    Finding("ild", "Interstitial lung disease", "Diffuse interstitial pattern (ILD)."),
    Finding("calcification", "Calcification", "Calcified granuloma, nodule or vessel wall."),
    Finding("lung_cyst", "Lung cyst", "Thin-walled air-filled space in the lung."),
    Finding("lung_cavity", "Lung cavity", "Gas-filled space within a consolidation or mass."),
    Finding("tuberculosis", "Tuberculosis", "Active tuberculosis or its sequelae."),
    Finding("fracture", "Fracture", "Rib, clavicle, vertebral or other bone fracture."),
    Finding("scoliosis", "Scoliosis", "Lateral curvature of the thoracic spine."),
    Finding("kyphosis", "Kyphosis", "Exaggerated forward curvature of the thoracic spine."),
    Finding("hernia", "Hernia", "Diaphragmatic or hiatal hernia."),
    Finding("support_devices", "Support devices", "Tubes, lines, catheters, pacemakers."),
    Finding("other_lesion", "Other lesion", "Abnormality not covered by the other local labels."),
    Finding("other_disease", "Other disease", "Disease not covered by the other global labels."),
)

FINDING_IDS: tuple[str, ...] = tuple(f.id for f in FINDINGS)
DERIVED: dict[str, tuple[str, ...]] = {f.id: f.derived_from for f in FINDINGS if f.derived_from}
"""Derived finding → the findings it merges (1 > -1 > 0 > missing) when all of them are present."""
_BY_ID = {f.id: f for f in FINDINGS}


def get_finding(finding_id: str) -> Finding:
    """The vocabulary entry for ``finding_id`` (ConfigError naming the known ids otherwise)."""
    try:
        return _BY_ID[finding_id]
    except KeyError:
        raise ConfigError(
            f"unknown finding {finding_id!r}; use one of: {', '.join(FINDING_IDS)}"
        ) from None


def in_vocabulary_order(ids: object) -> list[str]:
    """The canonical ids among ``ids``, in vocabulary order (other names dropped)."""
    wanted = set(ids)  # type: ignore[call-overload]
    return [f for f in FINDING_IDS if f in wanted]


def with_derived(ids: object) -> list[str]:
    """``ids`` plus every derived finding whose parts are all among them, in vocabulary order."""
    have = set(in_vocabulary_order(ids))
    have |= {d for d, parts in DERIVED.items() if have.issuperset(parts)}
    return in_vocabulary_order(have)
