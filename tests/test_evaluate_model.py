"""evaluate_model with the real (tiny, random) SynSeg, and the command line end to end."""
import copy
import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from eval_fixtures import DEFAULT_ROOTS, STEMS, class_labels, write_dataset, write_label_png, write_predictions

from training.datasets import load_reference_results
from training.evaluate import evaluate_model, main

SMALL = ["--short-side", "8", "--crop-size", "8", "--stride", "4"]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """A private copy of the session's tiny random SynSeg (these tests switch its mode)."""
    return copy.deepcopy(tiny_model)


def test_tiny_synseg_on_voc(tiny, tmp_path):
    write_dataset("voc", tmp_path)
    tiny.train()
    result = evaluate_model(tiny, "voc", tmp_path, short_side=8, crop_size=8, stride=4, device="cpu")
    assert tiny.training  # the model comes back in the mode it was given
    assert set(result) == {"dataset", "miou", "aacc", "per_class", "num_images", "settings", "timing"}
    assert list(result["per_class"])[:2] == ["background", "aeroplane"] and len(result["per_class"]) == 21
    # No activation exceeds a background score of 1 (ties go to background): every pixel is background, so
    # background IoU = 15 background pixels / 95 scored, person, car and dog 0, the 17 absent classes None.
    background = evaluate_model(tiny, "voc", tmp_path, bg_thresh=1.0, short_side=8, crop_size=8, stride=4)
    assert background["per_class"]["background"] == pytest.approx(100 * 15 / 95)
    assert [background["per_class"][name] for name in ("person", "car", "dog")] == [0.0, 0.0, 0.0]
    assert sum(iou is None for iou in background["per_class"].values()) == 17
    assert background["miou"] == pytest.approx(100 * 15 / 95 / 4)
    assert background["aacc"] == pytest.approx(100 * 15 / 95)
    settings = result["settings"]
    assert (settings["templates"], settings["num_templates"], settings["bg_thresh"]) == ("tcl", 9, 0.5)
    assert (settings["short_side"], settings["crop_size"], settings["stride"]) == (8, 8, 4)
    assert "not L2-normalised" in settings["text_embedding"] and settings["class_names"] == "mmseg"
    again = evaluate_model(tiny, "voc", tmp_path, short_side=8, crop_size=8, stride=4)
    assert again["per_class"] == result["per_class"]  # deterministic in eval mode


def test_text_is_encoded_once_with_the_chosen_names_and_templates(tiny, tmp_path, monkeypatch):
    write_dataset("voc", tmp_path)
    calls = []
    original = tiny.encode_text

    def spy(labels, templates=None):
        calls.append((list(labels), list(templates)))
        return original(labels, templates)

    monkeypatch.setattr(tiny, "encode_text", spy)
    evaluate_model(tiny, "voc", tmp_path, templates="simple", class_names_variant="readable", short_side=8,
                   crop_size=8, stride=8)
    assert len(calls) == 1
    names, templates = calls[0]
    assert templates == ["a photo of a {}."] and "dining table" in names and "background" not in names


def test_shapes_world_spec_single_window(tiny, tmp_path, monkeypatch):
    spec = tmp_path / "shapes.yaml"
    spec.write_text("name: shapes\nlayout: voc\nbackground: false\nclasses: [grass, sand, circle, square]\n")
    root = tmp_path / "shapes"
    write_dataset("voc", root, image_size=(64, 64))
    for stem in STEMS["voc"]:
        write_label_png(root / "SegmentationClass" / f"{stem}.png", np.arange(64 * 64).reshape(64, 64) % 4,
                        palette=True)
    shapes = []
    original = tiny.encode_image
    monkeypatch.setattr(tiny, "encode_image", lambda x: shapes.append(tuple(x.shape)) or original(x))
    result = evaluate_model(tiny, spec, root, short_side=64, crop_size=64, stride=32)
    assert shapes == [(1, 3, 64, 64)] * 2  # one 64x64 window per image
    assert result["dataset"] == "shapes" and list(result["per_class"]) == ["grass", "sand", "circle", "square"]


@pytest.mark.slow
def test_cli_with_a_model_writes_json_and_panels(tmp_path, capsys):
    write_dataset("context60", tmp_path / "data")
    out, vis = tmp_path / "out.json", tmp_path / "vis"
    assert main(["--dataset", "context60", "--data-root", str(tmp_path / "data"), "--model", "synseg-tiny",
                 "--device", "cpu", "--json", str(out), "--save-vis", str(vis), "--no-progress", *SMALL]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "context60" and result["num_images"] == 2
    assert result["settings"]["model"].startswith("synseg-tiny")
    assert "mIoU" in capsys.readouterr().out
    panel = cv2.imread(str(vis / "context60" / f"{STEMS['context60'][0]}.png"))
    assert panel.shape[1] == 3 * 8 and panel.shape[0] > 6  # image | prediction | ground truth + captions


def test_cli_checkpoint_round_trip(tiny, tmp_path):
    from synseg_model import save_checkpoint
    write_dataset("cityscapes", tmp_path / "data")
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny, checkpoint)
    out = tmp_path / "out.json"
    main(["--dataset", "cityscapes", "--data-root", str(tmp_path / "data"), "--checkpoint", str(checkpoint),
          "--device", "cpu", "--json", str(out), "--no-progress", *SMALL])
    expected = evaluate_model(tiny, "cityscapes", tmp_path / "data", short_side=8, crop_size=8, stride=4)
    assert json.loads(out.read_text())["per_class"] == pytest.approx(expected["per_class"])


def test_cli_all_prints_the_paper_row(tmp_path, capsys):
    reference = load_reference_results()
    for dataset in reference["datasets"].values():
        write_dataset(dataset, tmp_path / "data" / DEFAULT_ROOTS[dataset])
        write_predictions(dataset, tmp_path / "pred" / dataset, class_labels(dataset))
    out = tmp_path / "all.json"
    assert main(["--dataset", "all", "--data-root", str(tmp_path / "data"), "--predictions",
                 str(tmp_path / "pred"), "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert set(result["datasets"]) == {"voc", "context59", "coco_object", "coco_stuff", "cityscapes"}
    assert result["row"] == pytest.approx({"VOC": 100, "Context": 100, "Object": 100, "Stuff": 100,
                                           "City": 100, "Avg": 100})
    printed = capsys.readouterr().out
    assert "SynSeg (paper)" in printed and "TCL (paper)" in printed and "62.2" in printed and "33.4" in printed


def test_cli_input_errors_exit_2_naming_the_file(tmp_path, capsys):
    write_dataset("voc", tmp_path / "data")
    missing = tmp_path / "data" / "JPEGImages" / f"{STEMS['voc'][0]}.jpg"
    missing.unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "voc", "--data-root", str(tmp_path / "data"), "--predictions", str(tmp_path)])
    assert exit_info.value.code == 2 and str(missing) in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_cli_limit_must_be_positive(tmp_path, capsys, limit):
    write_dataset("voc", tmp_path / "data")
    write_predictions("voc", tmp_path / "pred", class_labels("voc"))
    with pytest.raises(SystemExit) as exit_info:  # -1 used to score all but the last image, 0 all of them
        main(["--dataset", "voc", "--data-root", str(tmp_path / "data"), "--predictions", str(tmp_path / "pred"),
              "--limit", limit])
    assert exit_info.value.code == 2 and "--limit" in capsys.readouterr().err


@pytest.mark.parametrize("defect", ["folder", "label", "prediction"])
def test_cli_all_checks_every_dataset_before_any_work(tmp_path, capsys, defect):
    reference = load_reference_results()
    for dataset in reference["datasets"].values():
        write_dataset(dataset, tmp_path / "data" / DEFAULT_ROOTS[dataset])
        write_predictions(dataset, tmp_path / "pred" / dataset, class_labels(dataset))
    # Cityscapes, the last dataset of the run, lacks its folder, a label or a prediction.
    stem = STEMS["cityscapes"][1]
    if defect == "folder":
        shutil.rmtree(tmp_path / "data" / "cityscapes")
        named = tmp_path / "data" / "leftImg8bit" / "val"
    else:
        named = (tmp_path / "data" / "cityscapes" / "gtFine" / "val" / f"{stem}_gtFine_labelTrainIds.png"
                 if defect == "label" else tmp_path / "pred" / "cityscapes" / f"{stem}.png")
        named.unlink()
    out = tmp_path / "all.json"
    argv = ["--dataset", "all", "--data-root", str(tmp_path / "data"), "--json", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--predictions", str(tmp_path / "pred")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and str(named) in captured.err
    assert captured.out == "" and not out.exists()  # no dataset was scored
    if defect != "prediction":  # checked before the model is loaded, too
        with pytest.raises(SystemExit):
            main([*argv, "--checkpoint", str(tmp_path / "absent.safetensors")])
        assert str(named) in capsys.readouterr().err


def test_cli_unlabeled_rule_for_coco_object(tmp_path):
    write_dataset("coco_object", tmp_path / "data")
    # Predictions that abstain (255) exactly where COCO-Stuff's pixel is unlabeled.
    pred = write_predictions("coco_object", tmp_path / "pred", class_labels("coco_object", "ignore"))
    out = tmp_path / "out.json"
    argv = ["--dataset", "coco_object", "--data-root", str(tmp_path / "data"), "--predictions", str(pred),
            "--json", str(out), "--no-progress"]
    main(argv)  # default: the unlabeled pixel is background, so the abstention misses it
    result = json.loads(out.read_text())
    assert result["settings"]["unlabeled"] == "background"
    assert result["per_class"]["background"] == pytest.approx(100 * 15 / 16)
    assert result["miou"] == pytest.approx((100 * 15 / 16 + 300) / 4)
    main([*argv, "--unlabeled", "ignore"])  # left out of the score
    result = json.loads(out.read_text())
    assert result["settings"]["unlabeled"] == "ignore" and result["miou"] == pytest.approx(100.0)


def _all_datasets(root):
    """Every dataset of --dataset all under root/data, with ground-truth predictions under root/pred."""
    for dataset in load_reference_results()["datasets"].values():
        write_dataset(dataset, root / "data" / DEFAULT_ROOTS[dataset])
        write_predictions(dataset, root / "pred" / dataset, class_labels(dataset))


@pytest.mark.parametrize("dataset, defect", [
    ("cityscapes", "truncated label"), ("cityscapes", "label value"), ("cityscapes", "prediction size"),
    ("context59", "label value"),  # a dataset in the middle: the ones after it are still scored
])
def test_cli_all_keeps_the_finished_results_when_a_dataset_fails(tmp_path, capsys, dataset, defect):
    _all_datasets(tmp_path)
    stem = STEMS[dataset][1]
    root = tmp_path / "data" / DEFAULT_ROOTS[dataset]
    label = next(root.rglob(f"{Path(stem).name}_gtFine_labelTrainIds.png" if dataset == "cityscapes"
                            else f"{stem}.png"))
    if defect == "truncated label":
        label.write_bytes(label.read_bytes()[:50])  # cut inside its image data
        named = label
    elif defect == "label value":
        write_label_png(label, np.full((6, 8), 200, np.uint8))
        named = label
    else:
        named = tmp_path / "pred" / dataset / f"{stem}.png"
        write_label_png(named, np.zeros((6, 7), np.uint8))
    out = tmp_path / "all.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "all", "--data-root", str(tmp_path / "data"), "--predictions", str(tmp_path / "pred"),
              "--json", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    result = json.loads(out.read_text())
    others = {"voc", "context59", "coco_object", "coco_stuff", "cityscapes"} - {dataset}
    assert set(result["datasets"]) == others and all(r["miou"] == 100 for r in result["datasets"].values())
    assert list(result["failed"]) == [dataset] and str(named) in result["failed"][dataset]
    assert result["pending"] == [] and result["row"]["Avg"] is None
    err = capsys.readouterr().err
    assert any(dataset in line and str(named) in line for line in err.splitlines())


def _read_only_dir() -> Path:
    """A folder no one may create files in, root included (root ignores permission bits)."""
    folder = Path("/sys")
    try:
        tempfile.NamedTemporaryFile(dir=folder).close()
    except OSError:
        return folder
    pytest.skip("no read-only folder on this system (/sys accepts new files)")


@pytest.mark.parametrize("option, where", [
    ("--json", "a folder"), ("--json", "below a file"), ("--json", "read-only folder"),
    ("--save-vis", "a file"), ("--save-vis", "read-only folder"),
])
def test_cli_checks_that_outputs_are_writable_before_scoring(tmp_path, capsys, option, where):
    write_dataset("voc", tmp_path / "data")
    pred = write_predictions("voc", tmp_path / "pred", class_labels("voc"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    path = {"a folder": tmp_path, "below a file": blocker / "sub" / "out.json", "a file": blocker,
            "read-only folder": None}[where]
    if path is None:
        path = _read_only_dir() / ("out.json" if option == "--json" else "vis")
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "voc", "--data-root", str(tmp_path / "data"), "--predictions", str(pred),
              option, str(path), "--no-progress"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""  # nothing was scored
    assert str(path) in captured.err and len(captured.err.strip().splitlines()) == 1


def test_cli_malformed_spec_is_one_line(tmp_path, capsys):
    spec = tmp_path / "mine.yaml"
    spec.write_text("layout: voc\nclasses: [a, b\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", str(spec), "--data-root", str(tmp_path), "--predictions", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and f"{spec}, line 3" in err
