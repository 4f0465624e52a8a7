"""The shapes world's results: a markdown table and a PNG figure of examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synseg_model import image_to_tensor, load_checkpoint
from training.datasets.readers import read_image, read_index_png
from training.eval_panels import colorize, make_palette

RESULTS_DOC_HEADER = """# Shapes world: results tables

**Generated**: `make shapes-table` (`python -m training.shapes run --install-default`, every row) writes this
file and `shapes_examples.png` from the run's results (the tables of `runs/shapes/results.md`). Do not edit it
by hand: rerun the pipeline. What the rows are, how they were chosen and what they show: [shapes.md](shapes.md).

"""


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean_sd(summary: dict[str, Any], key: str, digits: int = 1) -> str:
    if key not in summary:
        return "n/a"
    mean, sd = summary[key]["mean"], summary[key]["sd"]
    return _fmt(mean, digits) + ("" if sd is None else f" ± {_fmt(sd, digits)}")


def _mean_only(summary: dict[str, Any], key: str, digits: int = 1) -> str:
    return _fmt(summary[key]["mean"], digits) if key in summary else "n/a"


def results_markdown(results: dict[str, Any]) -> str:
    """The results table (test split; the seeds as columns, then mean ± sd over them), per-class IoUs, the
    gate figures and the timings, as markdown."""
    rows, labels, seeds = results["rows"], results["row_labels"], results["seeds"]
    lines = [
        "Test split. Per seed: mIoU / seen / unseen mIoU; then mean ± sd over the seeds a row ran on. Node "
        "masks: the mIoU of the masks the ROS node publishes (activation > 0.5), seen / unseen classes.", "",
        "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mIoU | seen mIoU | unseen mIoU | act on GT | "
        "act off GT | node masks | dev mIoU | dev node masks |",
        "|---|" + "---|" * (len(seeds) + 8),
    ]
    for name, row in rows.items():
        runs, summary = row["runs"], row["summary"]
        cells = []
        for seed in seeds:
            t = runs[seed]["test"] if seed in runs else None
            cells.append("" if t is None else
                         f"{_fmt(t['miou'])} / {_fmt(t['miou_seen'])} / {_fmt(t['miou_unseen'])}")
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " | " + " | ".join(
            _mean_sd(summary, key, digits) for key, digits in (
                ("test_miou", 1), ("test_miou_seen", 1), ("test_miou_unseen", 1), ("test_act_on", 3),
                ("test_act_off", 3))) + f" | {_mean_only(summary, 'test_mask_miou_seen')} / "
            f"{_mean_only(summary, 'test_mask_miou_unseen')} | {_mean_sd(summary, 'dev_miou')} | "
            f"{_mean_only(summary, 'dev_mask_miou')} |")
    lines += ["", robot_markdown(results)]
    classes = results["classes"]
    seen = set(results["seen_classes"])
    lines += ["", "Per-class IoU (%) on the test split, mean over the row's seeds; * = seen in stage 2.", "",
              "| row | " + " | ".join(c + ("*" if c in seen else "") for c in classes) + " |",
              "|---|" + "---|" * len(classes)]
    for name, row in rows.items():
        ious = [run["test"]["per_class"] for run in row["runs"].values()]
        means = [np.mean([i[c] for i in ious if i.get(c) is not None]) if any(i.get(c) is not None for i in ious)
                 else None for c in classes]
        lines.append(f"| {name} | " + " | ".join(_fmt(m, 0) for m in means) + " |")
    g, t = results["gate"], results["gate"]["test"]
    name, seed = results["shipped"]
    lines += ["", f"Stage-1 gate ({g['num_images']} gate-split images): " + ", ".join(
        f"{c} {v:.3f}" for c, v in g["auc"].items()) + f"; min AUC {g['min_auc']:.4f}; max text cosine "
        f"{g['max_text_cosine']:.3f} ({'/'.join(g['max_text_cosine_pair'])}), mean {g['mean_text_cosine']:.3f}: "
        + ("passed" if g["passed"] else "FAILED (" + "; ".join(g["failures"]) + ")"), "",
        f"The same CLIP on the {t['num_images']} test images (reported, not decided on): " + ", ".join(
            f"{c} {v:.3f}" for c, v in t["auc"].items()) + f"; min AUC {t['min_auc']:.4f}.", "",
        f"Shipped as the default model (best on dev by {results['ship_metric']} among the candidates' runs): "
        f"{labels[name]}, seed {seed}.",
        "", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items())]
    return "\n".join(lines) + "\n"


def _seen_unseen(summary: dict[str, Any], key: str, digits: int = 1) -> str:
    return f"{_mean_only(summary, key + '_seen', digits)} / {_mean_only(summary, key + '_unseen', digits)}"


def robot_markdown(results: dict[str, Any]) -> str:
    """What a robot receives, per row (mean over its seeds): the node's masks under each run's own mask rule,
    chosen on dev (``training.shapes.calibrate``), on the test split and the test probes."""
    rows, labels = results["rows"], results["row_labels"]
    lines = ["What a robot receives (test split and test probes; each run's mask rule chosen on dev). Node IoU, "
             "area ratio (predicted / true pixels) and absent: seen / unseen classes; caption recall: the share of "
             "the classes a scene's caption names that get a mask; absent: the worst class's share of scenes "
             "without it that get a mask over 1% of the frame; words: the worst word outside the world, the share "
             "of scenes where it gets such a mask; frames: the largest mask on a frame outside it, % of the frame.", "",
             "| row | rule (threshold / presence) | node IoU | area ratio | absent, seen / unseen | caption recall | "
             "words | frames | dev robot score |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        s = row["summary"]
        rules = {(r["mask_rule"]["threshold"], r["mask_rule"]["presence_threshold"]) for r in row["runs"].values()}
        lines.append(f"| {labels[name]} | {', '.join(f'{t:g} / {p:g}' for t, p in sorted(rules))} | "
                     f"{_seen_unseen(s, 'test_robot_iou')} | {_seen_unseen(s, 'test_robot_area_ratio', 2)} | "
                     f"{_seen_unseen(s, 'test_robot_worst_absent_rate')} | "
                     f"{_mean_only(s, 'test_robot_caption_recall')} | {_mean_only(s, 'test_robot_worst_word_rate')} | "
                     f"{_mean_only(s, 'test_robot_frame_largest')} | {_mean_sd(s, 'dev_robot_dev')} |")
    return "\n".join(lines)


@torch.no_grad()
def write_figure(root: Path, classes: list[str], rows: list[tuple[str, Path]], path: Path, images: int = 6,
                 activation_maps: int = 3) -> Path:
    """Examples from a VOC-layout split: image, ground truth, each row's prediction (argmax), and the
    activation maps of the last row for the classes in the image.

    Args:
        rows: (label, checkpoint) of each row shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = make_palette(len(classes))
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()[:images]
    models = [(label, load_checkpoint(checkpoint)) for label, checkpoint in rows]
    cols = 2 + len(models) + activation_maps
    fig, axes = plt.subplots(len(ids), cols, figsize=(1.6 * cols, 1.7 * len(ids)), squeeze=False)
    for r, i in enumerate(ids):
        image = read_image(root / "JPEGImages" / f"{i}.jpg")
        gt = read_index_png(root / "SegmentationClass" / f"{i}.png")
        panels = [(image, "image"), (colorize(gt, palette), "ground truth")]
        act = None
        for label, model in models:
            x = image_to_tensor(image, model.config.mean, model.config.std)
            act = torch.sigmoid(model(x, model.encode_text(classes)))[0]
            panels.append((colorize(act.argmax(0).numpy(), palette), label.split(")")[0] + ")"))
        present = [int(c) for c in np.unique(gt) if c < len(classes)][:activation_maps]
        for c in present:
            panels.append((act[c].numpy(), f"{classes[c]} (mask>0.5)"))
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(panels):
                continue
            data, title = panels[c]
            if data.ndim == 2:
                ax.imshow(data, cmap="viridis", vmin=0, vmax=1)
                ax.contour(data > 0.5, levels=[0.5], colors="white", linewidths=0.6)
            else:
                ax.imshow(data, interpolation="nearest")
            ax.set_title(title, fontsize=6)
    handles = [matplotlib.patches.Patch(color=palette[k] / 255, label=c) for k, c in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=len(classes), fontsize=6, frameon=False)
    fig.suptitle("Shapes world, test split: predictions (argmax) of "
                 + ", ".join(label for label, _ in models) + "; activation maps of the last", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
