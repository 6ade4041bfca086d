"""The canonical finding vocabulary every manifest column is named by.

Each dataset's own label names map onto these ids through the JSON label maps in
``cxrprobe/data/label_maps/``; the order here is the order of finding columns in every manifest.
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


FINDINGS: tuple[Finding, ...] = (
    Finding("no_finding", "No finding", "Normal study: no abnormality reported."),
    Finding(
        "enlarged_cardiomediastinum",
        "Enlarged cardiomediastinum",
        "Widened cardiac and mediastinal silhouette.",
    ),
    Finding("cardiomegaly", "Cardiomegaly", "Enlarged heart (cardiothoracic ratio above 0.5)."),
    Finding("aortic_enlargement", "Aortic enlargement", "Enlarged, elongated or tortuous aorta."),
    Finding("enlarged_pa", "Enlarged pulmonary artery", "Dilated main pulmonary artery."),
    Finding("mediastinal_shift", "Mediastinal shift", "Displacement of the mediastinum."),
    Finding("lung_opacity", "Lung opacity", "Any area of increased lung attenuation."),
    Finding("lung_lesion", "Lung lesion", "Focal lung abnormality (nodule, mass, cavity...)."),
    Finding("nodule_mass", "Nodule/mass", "Rounded opacity: nodule (<3 cm) or mass (>=3 cm)."),
    Finding("lung_tumor", "Lung tumour", "Primary or metastatic lung neoplasm."),
    Finding("consolidation", "Consolidation", "Alveolar air replaced by fluid or tissue."),
    Finding("pneumonia", "Pneumonia", "Infection of the lung parenchyma."),
    Finding("infiltration", "Infiltration", "Infiltrates: ill-defined parenchymal opacities."),
    Finding("atelectasis", "Atelectasis", "Partial or complete collapse of lung tissue."),
    Finding("edema", "Edema", "Pulmonary oedema (interstitial or alveolar fluid)."),
    Finding("pleural_effusion", "Pleural effusion", "Fluid in the pleural space."),
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
    Finding("hernia", "Hernia", "Diaphragmatic or hiatal hernia."),
    Finding("support_devices", "Support devices", "Tubes, lines, catheters, pacemakers."),
    Finding("other_lesion", "Other lesion", "Abnormality not covered by the other local labels."),
    Finding("other_disease", "Other disease", "Disease not covered by the other global labels."),
)

FINDING_IDS: tuple[str, ...] = tuple(f.id for f in FINDINGS)
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
