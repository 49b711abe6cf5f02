"""Data: synthetic studies with lesion masks, real dataset layouts, DICOM, transforms.

``open_dataset(spec, split)`` reads a dataset folder / CSV / YAML spec / .npz into a torch Dataset
of item dicts; ``load_image(path)`` reads one image as float32 (H, W, C) in [0, 1];
``SyntheticDataset`` renders a synthetic study lazily; ``write_study`` writes one in the real
layouts; ``dataset_info`` summarises a dataset. Volumes (:mod:`medxai.data.volumes`, docs/volumes.md):
``read_volume`` (NIfTI / DICOM series), ``resample``, ``VolumeDataset`` (the ``volumes`` layout of
``open_dataset``), ``SyntheticVolumeDataset`` and ``write_synthetic_volumes`` (``ct-nodule``).
"""

from medxai.data.datasets import ArrayDataset, ImageDataset, SyntheticDataset, open_dataset
from medxai.data.info import dataset_info
from medxai.data.io import DEFAULT_MAX_PIXELS, load_image, load_mask
from medxai.data.labels import CHEXPERT_FINDINGS, CHEXPERT_FIVE, UNCERTAINTY_POLICIES, apply_uncertainty
from medxai.data.layouts import DatasetSpec
from medxai.data.volumes import (
    VOLUME_WINDOWS,
    SyntheticVolumeDataset,
    Volume,
    VolumeDataset,
    apply_window,
    load_volume,
    load_volume_mask,
    read_dicom_series,
    read_nifti,
    read_volume,
    resample,
    write_dicom_series,
    write_nifti,
    write_synthetic_volumes,
)
from medxai.data.write import write_study, write_synthetic

__all__ = [
    "CHEXPERT_FINDINGS",
    "CHEXPERT_FIVE",
    "DEFAULT_MAX_PIXELS",
    "UNCERTAINTY_POLICIES",
    "VOLUME_WINDOWS",
    "ArrayDataset",
    "DatasetSpec",
    "ImageDataset",
    "SyntheticDataset",
    "SyntheticVolumeDataset",
    "Volume",
    "VolumeDataset",
    "apply_uncertainty",
    "apply_window",
    "dataset_info",
    "load_image",
    "load_mask",
    "load_volume",
    "load_volume_mask",
    "open_dataset",
    "read_dicom_series",
    "read_nifti",
    "read_volume",
    "resample",
    "write_dicom_series",
    "write_nifti",
    "write_study",
    "write_synthetic",
    "write_synthetic_volumes",
]
