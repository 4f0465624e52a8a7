"""Benchmark datasets: specs (YAML data files), readers and converters.

Public API::

    spec = load_dataset_spec("voc")                 # or a path to your own spec YAML
    data = SegmentationDataset(spec, Path("data/VOCdevkit/VOC2012"))
    image, label = data.load(0)                     # (H, W, 3) uint8 RGB, (H, W) int64 class indices
"""
from training.datasets.readers import (
    SampleRef,
    SegmentationDataset,
    list_samples,
    map_label,
    read_image,
    read_index_png,
    resolve_root,
)
from training.datasets.spec import (
    CLASS_NAME_VARIANTS,
    UNLABELED_RULES,
    DatasetSpec,
    list_datasets,
    list_template_sets,
    load_dataset_spec,
    load_protocol,
    load_reference_results,
    load_templates,
)

__all__ = [
    "CLASS_NAME_VARIANTS", "UNLABELED_RULES", "DatasetSpec", "SampleRef", "SegmentationDataset", "list_datasets",
    "list_samples",
    "list_template_sets", "load_dataset_spec", "load_protocol", "load_reference_results", "load_templates",
    "map_label", "read_image", "read_index_png", "resolve_root",
]
