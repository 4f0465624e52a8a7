"""Dataset specs and readers: each benchmark's exact on-disk layout, custom specs, clear errors."""
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import DATASETS, DEFAULT_ROOTS, STEMS, class_labels, write_dataset, write_label_png
from PIL import Image

from training.datasets import (
    SegmentationDataset,
    list_datasets,
    list_template_sets,
    load_dataset_spec,
    load_protocol,
    load_templates,
    read_index_png,
)
from training.metrics import IGNORE_INDEX

# (number of classes scored, background scored by bg_thresh, label 0 ignored)
EXPECTED = {"voc": (21, True, False), "voc20": (20, False, True), "context59": (59, False, True),
            "context60": (60, True, False), "coco_object": (81, True, False),
            "coco_stuff": (171, False, False), "cityscapes": (19, False, False)}


def test_builtin_specs():
    assert list_datasets() == sorted(EXPECTED)
    for name, (num_classes, background, reduce_zero) in EXPECTED.items():
        spec = load_dataset_spec(name)
        assert (spec.num_classes, spec.background, spec.reduce_zero_label) == (num_classes, background, reduce_zero)
        assert len(spec.prompt_names()) == num_classes - background
        assert spec.templates == "tcl"


def test_class_name_variants():
    voc = load_dataset_spec("voc")
    assert voc.class_names()[:2] == ["background", "aeroplane"]
    assert "diningtable" in voc.class_names("mmseg") and "dining table" in voc.class_names("readable")
    assert "background" not in voc.prompt_names()
    stuff = load_dataset_spec("coco_stuff").class_names("readable")
    assert "sky" in stuff and "sky-other" not in stuff and len(set(stuff)) == 171
    with pytest.raises(ValueError, match="variant"):
        voc.class_names("fancy")


def test_context_names_follow_mmseg_label_order():
    names = load_dataset_spec("context59").class_names()
    assert names == sorted(names)  # mmseg's converter numbers the 59 classes alphabetically
    assert load_dataset_spec("context60").class_names() == ["background"] + names


def test_templates_and_protocol():
    assert {"tcl", "simple"} <= set(list_template_sets())
    tcl = load_templates("tcl")
    assert len(tcl) == 9 and tcl[0] == "itap of a {}." and tcl[-1] == "a photo of {}s."
    assert load_templates("simple") == ["a photo of a {}."]
    protocol = load_protocol()
    assert (protocol["short_side"], protocol["crop_size"], protocol["stride"], protocol["bg_thresh"]) == \
        (448, 448, 224, 0.5)
    with pytest.raises(ValueError, match="unknown template set"):
        load_templates("nope")


@pytest.mark.parametrize("dataset", DATASETS)
def test_reader_on_exact_layout(dataset, tmp_path):
    write_dataset(dataset, tmp_path)
    data = SegmentationDataset(load_dataset_spec(dataset), tmp_path)
    assert len(data) == 2
    assert [ref.key for ref in data.samples] == STEMS[dataset]
    for index, expected in enumerate(class_labels(dataset)):
        image, label = data.load(index)
        assert image.shape == (*expected.shape, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(label, expected)


def test_coco_object_scores_unlabeled_pixels_as_background_by_default(tmp_path):
    # GroupViT's convert_coco_object.py writes COCO-Stuff's unlabeled 255 as 0; TCL's numbers come from its files.
    assert [name for name in EXPECTED if load_dataset_spec(name).unlabeled == "background"] == ["coco_object"]
    write_dataset("coco_object", tmp_path)
    spec = load_dataset_spec("coco_object")
    stored = read_index_png(tmp_path / "annotations" / "val2017" / f"{STEMS['coco_object'][0]}_instanceTrainIds.png")
    assert stored[0, 0] == IGNORE_INDEX  # the converter keeps 255, so both rules can be scored from one file
    assert SegmentationDataset(spec, tmp_path).label(0)[0, 0] == 0
    ignoring = SegmentationDataset(replace(spec, unlabeled="ignore"), tmp_path).label(0)
    np.testing.assert_array_equal(ignoring, class_labels("coco_object", "ignore")[0])
    assert ignoring[0, 0] == IGNORE_INDEX


def test_voc_labels_are_palette_indices(tmp_path):
    write_dataset("voc", tmp_path)
    path = tmp_path / "SegmentationClass" / f"{STEMS['voc'][0]}.png"
    assert Image.open(path).mode == "P"
    assert set(np.unique(read_index_png(path))) == {0, 7, 15, IGNORE_INDEX}


def test_data_root_may_be_the_common_data_folder(tmp_path):
    write_dataset("context60", tmp_path / DEFAULT_ROOTS["context60"])
    data = SegmentationDataset(load_dataset_spec("context60"), tmp_path)
    assert data.root == tmp_path / "VOCdevkit" / "VOC2010" and len(data) == 2


def test_limit(tmp_path):
    write_dataset("cityscapes", tmp_path)
    data = SegmentationDataset(load_dataset_spec("cityscapes"), tmp_path, limit=1)
    assert [ref.key for ref in data.samples] == STEMS["cityscapes"][:1]
    for bad in (0, -1):  # -1 used to drop the last image, 0 to score all of them
        with pytest.raises(ValueError, match="limit"):
            SegmentationDataset(load_dataset_spec("cityscapes"), tmp_path, limit=bad)


def _shapes_spec(path: Path) -> Path:
    """A spec like the shapes world's: VOC layout, no background, every index a class."""
    path.write_text("name: shapes\nlayout: voc\nbackground: false\ntemplates: simple\n"
                    "classes: [grass, sand, circle, square]\nreadable: {circle: round disc}\n")
    return path


def test_custom_spec_file(tmp_path):
    spec = load_dataset_spec(_shapes_spec(tmp_path / "shapes.yaml"))
    assert spec.name == "shapes" and spec.num_classes == 4 and not spec.background
    assert spec.img_dir == "JPEGImages" and spec.split == "ImageSets/Segmentation/val.txt"
    assert spec.prompt_names("readable") == ["grass", "sand", "round disc", "square"]
    root = tmp_path / "data"
    write_dataset("voc", root)  # VOC files, relabelled below with the four shape classes
    for stem in STEMS["voc"]:
        write_label_png(root / "SegmentationClass" / f"{stem}.png", np.full((6, 8), 3, np.uint8), palette=True)
    _, label = SegmentationDataset(spec, root).load(1)
    assert (label == 3).all()


@pytest.mark.parametrize("text, match", [
    ("layout: voc\nclasses: [a]\ncolour: red\n", "unknown key"),
    ("layout: nope\nclasses: [a]\n", "layout"),
    ("layout: voc\nclasses: [a, a]\n", "duplicate"),
    ("layout: voc\nclasses: []\n", "classes"),
    ("classes: [a, b]\n", "img_dir"),
    ("layout: voc\nclasses: [a, b]\nbackground: true\nreduce_zero_label: true\n", "exclude"),
    ("layout: voc\nclasses: [a]\nreadable: {b: c}\n", "readable"),
    ("layout: voc\nclasses: [a]\nbackground: yes please\n", "background"),
    ("layout: voc\nclasses: [a, b]\nbackground: true\nunlabeled: maybe\n", "unlabeled"),
    ("layout: voc\nclasses: [a, b]\nunlabeled: background\n", "needs 'background: true'"),
])
def test_bad_spec_names_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_dataset_spec(path)
    assert str(path) in str(info.value)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset_spec("imagenet")


def test_missing_files_are_named(tmp_path):
    write_dataset("voc", tmp_path)
    spec = load_dataset_spec("voc")
    missing_label = tmp_path / "SegmentationClass" / f"{STEMS['voc'][1]}.png"
    missing_label.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing_label)):
        SegmentationDataset(spec, tmp_path)
    missing_image = tmp_path / "JPEGImages" / f"{STEMS['voc'][0]}.jpg"
    missing_image.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing_image)):
        SegmentationDataset(spec, tmp_path)


def test_empty_split_and_missing_split_file(tmp_path):
    write_dataset("voc", tmp_path)
    split = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text("\n")
    with pytest.raises(ValueError, match="empty split"):
        SegmentationDataset(load_dataset_spec("voc"), tmp_path)
    split.unlink()
    with pytest.raises(FileNotFoundError, match="val.txt"):
        SegmentationDataset(load_dataset_spec("voc"), tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder"):
        SegmentationDataset(load_dataset_spec("coco_stuff"), tmp_path)


def test_size_mismatch_names_the_label(tmp_path):
    write_dataset("coco_stuff", tmp_path)
    label = tmp_path / "annotations" / "val2017" / f"{STEMS['coco_stuff'][0]}_labelTrainIds.png"
    write_label_png(label, np.zeros((5, 8), np.uint8))
    data = SegmentationDataset(load_dataset_spec("coco_stuff"), tmp_path)
    with pytest.raises(ValueError, match=f"{label}.*differs"):
        data.load(0)


def test_truncated_jpeg_is_named(tmp_path):
    # OpenCV decodes a truncated JPEG to a grey lower part, with only libjpeg's warning on stderr.
    write_dataset("voc", tmp_path, image_size=(64, 96))
    image = tmp_path / "JPEGImages" / f"{STEMS['voc'][1]}.jpg"
    image.write_bytes(image.read_bytes()[:-200])
    data = SegmentationDataset(load_dataset_spec("voc"), tmp_path)
    data.load(0)
    with pytest.raises(ValueError, match=f"{image}.*truncated"):
        data.load(1)


def test_image_size_from_the_header_follows_exif_orientation(tmp_path):
    # A camera JPEG stored 6 wide and 8 high with EXIF orientation 6 (turn 90 degrees) decodes to 8x6, the
    # label's size: the header check of --predictions must agree with what read_image returns.
    write_dataset("voc", tmp_path)
    image = Image.fromarray(np.zeros((8, 6, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "JPEGImages" / f"{STEMS['voc'][0]}.jpg", exif=exif.tobytes())
    data = SegmentationDataset(load_dataset_spec("voc"), tmp_path)
    assert data.load(0)[0].shape == (6, 8, 3)
    np.testing.assert_array_equal(data.label(0), class_labels("voc")[0])


def test_label_values_outside_the_classes_are_named(tmp_path):
    write_dataset("cityscapes", tmp_path)
    label = tmp_path / "gtFine" / "val" / f"{STEMS['cityscapes'][0]}_gtFine_labelTrainIds.png"
    write_label_png(label, np.full((6, 8), 33, np.uint8))  # a label id, not a train id
    with pytest.raises(ValueError, match=f"{label}.*33"):
        SegmentationDataset(load_dataset_spec("cityscapes"), tmp_path).label(0)


def test_rgb_label_is_refused(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="single-channel"):
        read_index_png(path)


# --- bad input files: one line naming the file, the line and the problem -----------------------------------

def test_split_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    write_dataset("voc", tmp_path)
    split = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    split.write_bytes(f"{STEMS['voc'][0]}\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError) as info:
        SegmentationDataset(load_dataset_spec("voc"), tmp_path)
    message = str(info.value)
    assert str(split) in message and "line 2" in message and "UTF-8" in message and "\n" not in message
    split.write_text("".join(f"{stem}\n" for stem in STEMS["voc"]), encoding="utf-16")
    with pytest.raises(ValueError) as info:
        SegmentationDataset(load_dataset_spec("voc"), tmp_path)
    assert str(split) in str(info.value) and "UTF-16" in str(info.value)
    split.write_text("".join(f"{stem}\n" for stem in STEMS["voc"]), encoding="utf-8-sig")  # a UTF-8 BOM is fine
    assert [ref.key for ref in SegmentationDataset(load_dataset_spec("voc"), tmp_path).samples] == STEMS["voc"]


def test_duplicate_and_crlf_stems_are_scored_once_with_a_warning(tmp_path, caplog):
    write_dataset("voc", tmp_path)
    split = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    first, second = STEMS["voc"]
    split.write_bytes(f"{first}\r\n{second}\r\n{first}\r\n{second}\n{first}\n".encode())
    with caplog.at_level(logging.WARNING, logger="training.datasets.readers"):
        data = SegmentationDataset(load_dataset_spec("voc"), tmp_path)
    assert [ref.key for ref in data.samples] == STEMS["voc"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(split) in warnings[0] and "3 duplicate" in warnings[0]
    assert f"{first!r} on lines 1 and 3" in warnings[0] and "\n" not in warnings[0]


@pytest.mark.parametrize("text, line, problem", [
    ("layout: voc\nclasses: [a, b\n", 3, "expected ',' or ']'"),
    ("layout: voc\n  classes: [a]\n", 2, "mapping values are not allowed"),
    ("layout: voc\nclasses: [a]\nlayout: context\n", 3, "duplicate key 'layout' (first on line 1)"),
    ("layout: voc\nclasses:\n\t- a\n", 3, "'\\t'"),
])
def test_malformed_spec_is_one_line_with_file_and_line(tmp_path, text, line, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_dataset_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}") and problem in message and "\n" not in message


def test_spec_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes("layout: voc\nclasses: [caf\xe9]\n".encode("latin-1"))
    with pytest.raises(ValueError) as info:
        load_dataset_spec(path)
    assert str(info.value).startswith(f"{path}, line 2") and "UTF-8" in str(info.value)
