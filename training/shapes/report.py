"""The shapes world's results: a markdown table and a PNG figure of examples."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from synseg_model import image_to_tensor, load_checkpoint
from training.datasets.readers import read_image, read_index_png
from training.eval_panels import colorize, make_palette

if TYPE_CHECKING:
    from training.shapes.pipeline import Pipeline


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The results table (test split), per-class IoUs, the gate figures and the timings, as markdown."""
    rows, labels = results["rows"], results["row_labels"]
    lines = [
        "| row | mIoU | seen mIoU | unseen mIoU | aAcc | act on GT | act off GT | dev mIoU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        t = row["test"]
        lines.append(f"| {labels[name]} | {_fmt(t['miou'])} | {_fmt(t['miou_seen'])} | {_fmt(t['miou_unseen'])} | "
                     f"{_fmt(t['aacc'])} | {_fmt(t['act_on'], 3)} | {_fmt(t['act_off'], 3)} | "
                     f"{_fmt(row['dev']['miou'])} |")
    classes = results["classes"]
    seen = set(results["seen_classes"])
    lines += ["", "Per-class IoU (%) on the test split; * = seen in stage 2.", "",
              "| row | " + " | ".join(c + ("*" if c in seen else "") for c in classes) + " |",
              "|---|" + "---|" * len(classes)]
    for name, row in rows.items():
        ious = row["test"]["per_class"]
        lines.append(f"| {name} | " + " | ".join(_fmt(ious.get(c), 0) for c in classes) + " |")
    g, t = results["gate"], results["gate"]["test"]
    lines += ["", f"Stage-1 gate ({g['num_images']} gate-split images): " + ", ".join(
        f"{c} {v:.3f}" for c, v in g["auc"].items()) + f"; min AUC {g['min_auc']:.4f}; max text cosine "
        f"{g['max_text_cosine']:.3f} ({'/'.join(g['max_text_cosine_pair'])}), mean {g['mean_text_cosine']:.3f}: "
        + ("passed" if g["passed"] else "FAILED (" + "; ".join(g["failures"]) + ")"), "",
        f"The same CLIP on the {t['num_images']} test images (reported, not decided on): " + ", ".join(
            f"{c} {v:.3f}" for c, v in t["auc"].items()) + f"; min AUC {t['min_auc']:.4f}.", "",
        f"Shipped as the default model (best dev mIoU among the candidates): {labels[results['shipped']]}.", "",
        "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_s"].items())]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def write_figure(pipeline: "Pipeline", rows: dict[str, dict[str, Any]], path: Path) -> Path:
    """Examples from the test split: image, ground truth, each chosen row's prediction, and the activation
    maps of the last chosen row for the classes in the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = pipeline.cfg["figure"]
    names = [n for n in cfg["rows"] if n in rows]
    classes = pipeline.world.class_names
    palette = make_palette(len(classes))
    root = pipeline.test_root
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()[: cfg["images"]]
    models = {n: load_checkpoint(rows[n]["checkpoint"]) for n in names}
    n_maps = cfg["activation_maps"]
    cols = 2 + len(names) + n_maps
    fig, axes = plt.subplots(len(ids), cols, figsize=(1.6 * cols, 1.7 * len(ids)), squeeze=False)
    labels = pipeline.row_labels()
    for r, i in enumerate(ids):
        image = read_image(root / "JPEGImages" / f"{i}.jpg")
        gt = read_index_png(root / "SegmentationClass" / f"{i}.png")
        panels = [(image, "image"), (colorize(gt, palette), "ground truth")]
        act = None
        for n, model in models.items():
            x = image_to_tensor(image, model.config.mean, model.config.std)
            act = torch.sigmoid(model(x, model.encode_text(classes)))[0]
            panels.append((colorize(act.argmax(0).numpy(), palette), labels[n].split(")")[0] + ")"))
        present = [int(c) for c in np.unique(gt) if c < len(classes)][:n_maps]
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
                 + ", ".join(labels[n] for n in names) + "; activation maps of the last", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
