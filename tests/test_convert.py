"""Converters: COCO-Stuff 182 -> 171, COCO things -> 1..80, Cityscapes 34 -> 19, on official layouts."""
import numpy as np
import pytest
from eval_fixtures import write_label_png, write_rgb

from training.datasets import SegmentationDataset, load_dataset_spec, read_index_png
from training.datasets.convert import cityscapes_lut, coco_object_lut, coco_stuff_lut, main

UNUSED_COCO_IDS = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]  # 0-based ids with no COCO category


def test_coco_stuff_182_to_171():
    lut = coco_stuff_lut()
    # person 0 -> 0; fire hydrant 10 -> 10; stop sign 12 (after the gap at 11) -> 11; toothbrush 89 -> 79;
    # banner 91 (first stuff) -> 80; wood 181 (last) -> 170; unlabeled stays 255.
    for src, dst in [(0, 0), (10, 10), (12, 11), (89, 79), (91, 80), (181, 170), (255, 255)]:
        assert lut[src] == dst, src
    assert all(lut[i] == 255 for i in UNUSED_COCO_IDS)
    assert sorted(set(lut[:182].tolist()) - {255}) == list(range(171))


def test_coco_object_things_to_1_80():
    lut = coco_object_lut()
    # things in order -> 1..80; every stuff id -> 0 (background); 255 stays 255.
    for src, dst in [(0, 1), (10, 11), (12, 12), (89, 80), (91, 0), (181, 0), (255, 255)]:
        assert lut[src] == dst, src
    assert sorted(set(lut[:91].tolist()) - {0}) == list(range(1, 81))


def test_cityscapes_34_to_19():
    lut = cityscapes_lut()
    # road 7 -> 0, car 26 -> 13, bicycle 33 -> 18; unlabeled 0, parking 9, caravan 29 -> 255.
    for src, dst in [(7, 0), (8, 1), (11, 2), (26, 13), (31, 16), (33, 18), (0, 255), (9, 255), (29, 255)]:
        assert lut[src] == dst, src
    assert sorted(set(lut[:34].tolist()) - {255}) == list(range(19))


def _official_coco(root, stem="000000000139"):
    raw = np.array([[0, 12, 181, 255], [91, 89, 0, 0]], dtype=np.uint8)
    write_label_png(root / "annotations" / "val2017" / f"{stem}.png", raw)
    write_rgb(root / "images" / "val2017" / f"{stem}.jpg", np.zeros((2, 4, 3), np.uint8))
    return stem


def test_coco_cli_writes_train_ids_and_links_images(tmp_path):
    src, dst = tmp_path / "official", tmp_path / "converted"
    stem = _official_coco(src)
    assert main(["coco_stuff", "--src", str(src), "--dst", str(dst)]) == 0
    assert main(["coco_object", "--src", str(src), "--dst", str(dst)]) == 0
    stuff = read_index_png(dst / "annotations" / "val2017" / f"{stem}_labelTrainIds.png")
    things = read_index_png(dst / "annotations" / "val2017" / f"{stem}_instanceTrainIds.png")
    np.testing.assert_array_equal(stuff, [[0, 11, 170, 255], [80, 79, 0, 0]])
    np.testing.assert_array_equal(things, [[1, 12, 0, 255], [0, 80, 1, 1]])
    assert (dst / "images" / "val2017").is_symlink()
    # the converted tree is what the readers expect
    for name in ("coco_stuff", "coco_object"):
        assert len(SegmentationDataset(load_dataset_spec(name), dst)) == 1


def test_conversion_skips_existing_files_unless_overwrite(tmp_path):
    stem = _official_coco(tmp_path)
    out = tmp_path / "annotations" / "val2017" / f"{stem}_labelTrainIds.png"
    main(["coco_stuff", "--src", str(tmp_path)])
    write_label_png(out, np.zeros((2, 4), np.uint8))
    main(["coco_stuff", "--src", str(tmp_path)])
    assert read_index_png(out).max() == 0
    main(["coco_stuff", "--src", str(tmp_path), "--overwrite"])
    np.testing.assert_array_equal(read_index_png(out), [[0, 11, 170, 255], [80, 79, 0, 0]])


def test_cityscapes_cli(tmp_path):
    stem = "frankfurt/frankfurt_000000_000294"
    write_label_png(tmp_path / "gtFine" / "val" / f"{stem}_gtFine_labelIds.png",
                    np.array([[7, 26, 33, 0], [9, 24, 23, 21]], dtype=np.uint8))
    assert main(["cityscapes", "--src", str(tmp_path), "--workers", "2"]) == 0
    out = read_index_png(tmp_path / "gtFine" / "val" / f"{stem}_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(out, [[0, 13, 18, 255], [255, 11, 10, 8]])


def _bad_source(tmp_path, case):
    """A COCO-Stuff download with one defect; returns (--src, the path the error must name)."""
    src = tmp_path / "official"
    annotations = src / "annotations" / "val2017"
    if case == "missing src":
        return src, annotations
    annotations.mkdir(parents=True)
    if case == "empty folder":
        return src, annotations
    _official_coco(src, "000000000139")
    bad = annotations / "000000000285.png"
    if case == "corrupt png":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    else:  # an RGB PNG where a single-channel label map belongs
        write_rgb(bad, np.zeros((2, 4, 3), np.uint8))
    return src, bad


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("case", ["missing src", "empty folder", "corrupt png", "rgb png"])
def test_bad_source_is_one_line_naming_the_file_and_exit_2(tmp_path, capfd, case, workers):
    src, named = _bad_source(tmp_path, case)
    with pytest.raises(SystemExit) as info:
        main(["coco_object", "--src", str(src), "--dst", str(tmp_path / "out"), "--workers", workers])
    err = capfd.readouterr().err  # file-descriptor level: worker processes included
    assert info.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("python -m training.datasets.convert: error: ")
    assert str(named) in errors[0]
    assert err.rstrip().splitlines()[-1] == errors[0]
