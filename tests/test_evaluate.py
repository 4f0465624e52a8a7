"""Protocol inference and scoring on every benchmark layout, with saved predictions and a fake model."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from eval_fixtures import DATASETS, STEMS, class_labels, write_dataset, write_label_png, write_predictions

from training.datasets import SegmentationDataset, load_dataset_spec
from training.evaluate import evaluate_model, evaluate_predictions
from training.inference import labels_from_logits, rescale_keep_ratio, slide_logits, window_boxes

# Label (class index) covering most scored pixels in each fixture: 48 pixels of 95 scored ones where
# the dataset scores label 0, 48 of 80 where label 0 is ignored (see eval_fixtures._BLOCKS).
MAJORITY = {"voc": 15, "voc20": 14, "context59": 1, "context60": 2, "coco_object": 1, "coco_stuff": 1,
            "cityscapes": 1}
# A constant prediction of the majority class: IoU 48/95 for it, 0 for the 3 other classes present -> mIoU
# 48/95/4 = 12/95; with label 0 ignored: 48/80 for it, 0 for the 2 others -> 0.6/3 = 0.2; COCO-Object scores
# its unlabeled pixel as background: 48/96 for it -> 0.5/4.
CONSTANT_MIOU = {name: 100 * 12 / 95 for name in DATASETS} | {"voc20": 20.0, "context59": 20.0, "coco_object": 12.5}
CONSTANT_AACC = {name: 100 * 48 / 95 for name in DATASETS} | {"voc20": 60.0, "context59": 60.0, "coco_object": 50.0}
WITH_BACKGROUND = ("voc", "context60", "coco_object")
# (scored pixels, background pixels) of the fixtures with background: COCO-Object's unlabeled pixel is background.
BACKGROUND_PIXELS = {"voc": (95, 15), "context60": (95, 15), "coco_object": (96, 16)}
SMALL = {"short_side": 6, "crop_size": 4, "stride": 2}  # sliding windows on the 6x8 fixtures


class ConstantModel(torch.nn.Module):
    """Stand-in for SynSeg: logit 0 for category ``hot``, -10 for the others; records its calls."""

    def __init__(self, hot: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        self.hot = hot
        self.windows: list[tuple[int, int]] = []
        self.prompts: list[tuple[list[str], list[str]]] = []

    def encode_text(self, labels, templates):
        self.prompts.append((list(labels), list(templates)))
        return torch.zeros(len(labels), 4)

    def encode_image(self, images):
        self.windows += [tuple(images.shape[-2:])] * images.shape[0]
        return [images]

    def decode(self, activations, text, image_size):
        logits = torch.full((activations[0].shape[0], text.shape[0], *image_size), -10.0)
        logits[:, self.hot] = 0.0
        return logits


def _prompt_index(dataset: str) -> int:
    return MAJORITY[dataset] - (dataset in WITH_BACKGROUND)


@pytest.mark.parametrize("dataset", DATASETS)
def test_ground_truth_as_predictions_scores_100(dataset, tmp_path):
    write_dataset(dataset, tmp_path / "data")
    predictions = write_predictions(dataset, tmp_path / "pred", class_labels(dataset))
    result = evaluate_predictions(predictions, dataset, tmp_path / "data")
    assert result["miou"] == pytest.approx(100.0) and result["aacc"] == pytest.approx(100.0)
    assert result["num_images"] == 2 and result["dataset"] == dataset
    present = {int(v) for label in class_labels(dataset) for v in np.unique(label) if v != 255}
    names = list(result["per_class"])
    for index, name in enumerate(names):
        assert result["per_class"][name] == (pytest.approx(100.0) if index in present else None)


@pytest.mark.parametrize("dataset", DATASETS)
def test_constant_prediction_scores_the_hand_computed_value(dataset, tmp_path):
    write_dataset(dataset, tmp_path / "data")
    constant = [np.full((6, 8), MAJORITY[dataset], np.uint8)] * 2
    result = evaluate_predictions(write_predictions(dataset, tmp_path / "pred", constant), dataset,
                                  tmp_path / "data")
    assert result["miou"] == pytest.approx(CONSTANT_MIOU[dataset])
    assert result["aacc"] == pytest.approx(CONSTANT_AACC[dataset])


@pytest.mark.parametrize("dataset", DATASETS)
def test_ignored_pixels_are_excluded(dataset, tmp_path):
    write_dataset(dataset, tmp_path / "data")
    maps = [label.copy() for label in class_labels(dataset)]
    wrong = (MAJORITY[dataset] + 1) % 10
    for label in maps:
        label[label == 255] = wrong  # wrong only where the ground truth is not scored
    result = evaluate_predictions(write_predictions(dataset, tmp_path / "pred", maps), dataset, tmp_path / "data")
    assert result["miou"] == pytest.approx(100.0)


@pytest.mark.parametrize("dataset", DATASETS)
def test_model_path_matches_the_constant_prediction(dataset, tmp_path):
    write_dataset(dataset, tmp_path)
    model = ConstantModel(_prompt_index(dataset))
    # bg_thresh just below the hot category's probability 0.5: the category wins everywhere
    result = evaluate_model(model, dataset, tmp_path, bg_thresh=0.49, **SMALL)
    assert result["miou"] == pytest.approx(CONSTANT_MIOU[dataset])
    names, templates = model.prompts[0]
    assert len(model.prompts) == 1 and len(templates) == 9  # TCL's nine, encoded once per dataset
    assert "background" not in names and len(names) == len(result["per_class"]) - (dataset in WITH_BACKGROUND)


@pytest.mark.parametrize("dataset", WITH_BACKGROUND)
def test_background_threshold_decides_exactly_at_the_boundary(dataset, tmp_path):
    write_dataset(dataset, tmp_path)
    model = ConstantModel(_prompt_index(dataset))  # probability of the hot category: sigmoid(0) = 0.5
    at = evaluate_model(model, dataset, tmp_path, bg_thresh=0.5, **SMALL)
    below = float(np.nextafter(np.float32(0.5), np.float32(0.0)))
    above = evaluate_model(model, dataset, tmp_path, bg_thresh=below, **SMALL)
    background, hot = list(at["per_class"])[0], list(at["per_class"])[MAJORITY[dataset]]
    scored, background_pixels = BACKGROUND_PIXELS[dataset]
    # A tie goes to background: every pixel background, IoU = background pixels / scored pixels.
    assert at["per_class"][background] == pytest.approx(100 * background_pixels / scored)
    assert at["per_class"][hot] == 0.0
    assert above["per_class"][background] == 0.0 and above["per_class"][hot] == pytest.approx(100 * 48 / scored)
    assert at["settings"]["bg_thresh"] == 0.5


@pytest.mark.parametrize("dataset", sorted(set(DATASETS) - set(WITH_BACKGROUND)))
def test_background_threshold_is_unused_without_background(dataset, tmp_path):
    write_dataset(dataset, tmp_path)
    result = evaluate_model(ConstantModel(_prompt_index(dataset)), dataset, tmp_path, bg_thresh=0.99, **SMALL)
    assert result["miou"] == pytest.approx(CONSTANT_MIOU[dataset])
    assert result["settings"]["bg_thresh"] is None


@pytest.mark.parametrize("dataset", DATASETS)
def test_image_smaller_than_the_crop_takes_a_single_window(dataset, tmp_path):
    write_dataset(dataset, tmp_path)
    model = ConstantModel(0)
    evaluate_model(model, dataset, tmp_path, short_side=6, crop_size=16, stride=8)
    assert model.windows == [(6, 8), (6, 8)]  # one window of the image's own size per image
    model.windows.clear()
    evaluate_model(model, dataset, tmp_path, **SMALL)
    assert model.windows == [(4, 4)] * 12  # 2 rows x 3 columns of 4x4 windows per image


def test_window_boxes_follow_mmseg():
    assert window_boxes(6, 8, 16, 8) == [(0, 6, 0, 8)]
    assert window_boxes(4, 7, 4, 2) == [(0, 4, 0, 4), (0, 4, 2, 6), (0, 4, 3, 7)]  # last one shifted back


@pytest.mark.parametrize("width, expected", [
    (6, [0, 1, 1, 2, 2, 3]),              # windows x in [0,4) and [2,6): averages of local x
    (7, [0, 1, 1, 4 / 3, 1.5, 2.5, 3]),  # a third window [3,7) shifted back to the border
])
@pytest.mark.parametrize("window_batch", [1, 3])
def test_sliding_window_averages_logits(width, expected, window_batch):
    def local_x(windows):  # logit = x coordinate inside the window: depends on the window's position
        b, _, h, w = windows.shape
        return torch.arange(w, dtype=torch.float32).expand(b, 1, h, w)

    logits = slide_logits(local_x, torch.zeros(1, 3, 4, width), crop_size=4, stride=2, window_batch=window_batch)
    assert logits.shape == (1, 1, 4, width)
    np.testing.assert_allclose(logits[0, 0, 0].numpy(), expected, rtol=1e-6)
    assert (logits[0, 0] == logits[0, 0, :1]).all()  # one row of windows: rows agree


def test_rescale_keeps_the_aspect_ratio():
    assert rescale_keep_ratio(np.zeros((6, 8, 3), np.uint8), 3, 2048).shape == (3, 4, 3)
    assert rescale_keep_ratio(np.zeros((375, 500, 3), np.uint8), 448, 2048).shape == (448, 597, 3)
    assert rescale_keep_ratio(np.zeros((10, 50, 3), np.uint8), 448, 2048).shape == (410, 2048, 3)  # long cap


def test_labels_from_logits():
    logits = torch.tensor([[[0.0, 1.0, -1.0]], [[0.0, 2.0, -3.0]]])  # (K=2, H=1, W=3)
    assert labels_from_logits(logits, None).tolist() == [[0, 1, 0]]  # ties to the first category
    assert labels_from_logits(logits, 0.5).tolist() == [[0, 2, 0]]  # 0 = background; sigmoid(0) ties
    assert labels_from_logits(logits, 0.9).tolist() == [[0, 0, 0]]


def test_prediction_errors_name_the_file(tmp_path):
    write_dataset("voc", tmp_path / "data")
    pred = write_predictions("voc", tmp_path / "pred", class_labels("voc"))
    bad = pred / f"{STEMS['voc'][1]}.png"
    write_label_png(bad, np.full((6, 8), 21, np.uint8))
    with pytest.raises(ValueError, match=f"{bad}.*21"):
        evaluate_predictions(pred, "voc", tmp_path / "data")
    write_label_png(bad, np.zeros((6, 7), np.uint8))
    with pytest.raises(ValueError, match=f"{bad}.*size"):
        evaluate_predictions(pred, "voc", tmp_path / "data")
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=str(bad)):
        evaluate_predictions(pred, "voc", tmp_path / "data")


@pytest.mark.parametrize("unlabeled, miou, aacc", [
    (None, 12.5, 50.0),                           # the default: background, as GroupViT's files and TCL's numbers
    ("background", 12.5, 50.0),                   # the unlabeled pixel is a background pixel: 96 scored
    ("ignore", 100 * 12 / 95, 100 * 48 / 95),      # it is left out: 95 scored
])
def test_coco_object_unlabeled_pixels_both_rules(unlabeled, miou, aacc, tmp_path):
    write_dataset("coco_object", tmp_path / "data")
    constant = [np.full((6, 8), MAJORITY["coco_object"], np.uint8)] * 2
    pred = write_predictions("coco_object", tmp_path / "pred", constant)
    result = evaluate_predictions(pred, "coco_object", tmp_path / "data", unlabeled=unlabeled)
    assert (result["miou"], result["aacc"]) == (pytest.approx(miou), pytest.approx(aacc))
    assert result["settings"]["unlabeled"] == (unlabeled or "background")
    model = ConstantModel(_prompt_index("coco_object"))
    scored = evaluate_model(model, "coco_object", tmp_path / "data", bg_thresh=0.49, unlabeled=unlabeled, **SMALL)
    assert (scored["miou"], scored["aacc"]) == (pytest.approx(miou), pytest.approx(aacc))
    truth = write_predictions("coco_object", tmp_path / "truth", class_labels("coco_object", unlabeled))
    assert evaluate_predictions(truth, "coco_object", tmp_path / "data", unlabeled=unlabeled)["miou"] == 100.0


def test_unlabeled_rule_is_unused_without_background(tmp_path):
    write_dataset("context59", tmp_path / "data")
    pred = write_predictions("context59", tmp_path / "pred", class_labels("context59"))
    result = evaluate_predictions(pred, "context59", tmp_path / "data", unlabeled="background")
    assert result["miou"] == 100.0 and result["settings"]["unlabeled"] == "ignore"


def test_predictions_check_the_label_against_the_image_size(tmp_path):
    # The image is never decoded when scoring saved predictions: its size comes from the file header.
    write_dataset("coco_stuff", tmp_path / "data")
    label = tmp_path / "data" / "annotations" / "val2017" / f"{STEMS['coco_stuff'][1]}_labelTrainIds.png"
    write_label_png(label, np.zeros((6, 7), np.uint8))
    pred = write_predictions("coco_stuff", tmp_path / "pred", [np.zeros((6, 8), np.uint8), np.zeros((6, 7), np.uint8)])
    with pytest.raises(ValueError, match=f"{label}.*differs from image size 8x6"):
        evaluate_predictions(pred, "coco_stuff", tmp_path / "data")


def test_abstaining_predictions_and_flat_cityscapes_names(tmp_path):
    write_dataset("cityscapes", tmp_path / "data")
    labels = class_labels("cityscapes")
    labels[1] = np.full((6, 8), 255)  # a method that abstains on the second image
    for stem, label in zip(STEMS["cityscapes"], labels):
        write_label_png(tmp_path / "pred" / f"{stem.split('/')[1]}.png", label)  # flat, no city folders
    result = evaluate_predictions(tmp_path / "pred", "cityscapes", tmp_path / "data")
    # image 0: 47 scored pixels right; image 1: 48 missed; sidewalk (16 + 32 px) found 16: IoU 16/48
    assert result["aacc"] == pytest.approx(100 * 47 / 95)
    assert result["per_class"]["sidewalk"] == pytest.approx(100 * 16 / 48)


def test_shards_split_the_images_between_ranks(tmp_path):
    # Without torch.distributed the all-reduce is a no-op (tested in test_metrics), so each shard's scores
    # are those of its own images: rank 0 of 2 takes image 0, rank 1 image 1.
    write_dataset("voc", tmp_path)
    for rank in range(2):
        model = ConstantModel(_prompt_index("voc"))
        shard = evaluate_model(model, "voc", tmp_path, bg_thresh=0.49, shard=(rank, 2), **SMALL)
        assert len(model.windows) == 6  # one image of 6 windows
        alone = SegmentationDataset(load_dataset_spec("voc"), tmp_path).samples[rank]
        only = tmp_path / f"only{rank}"
        write_dataset("voc", only)
        (only / "ImageSets" / "Segmentation" / "val.txt").write_text(alone.key + "\n")
        single = evaluate_model(ConstantModel(_prompt_index("voc")), "voc", only, bg_thresh=0.49, **SMALL)
        assert shard["per_class"] == single["per_class"]
