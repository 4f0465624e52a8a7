"""``python -m training.shapes run``: SynSeg's whole recipe in the shapes world, from nothing to a table.

1. data: training shards, held-out test, dev and gate splits (VOC layout), spaCy labels;
2. stage 1: the small CLIP with open_clip_train, then the zero-shot gate on the gate split (the run stops if
   it fails) and the same figures on the test split, for the report;
3. stage 2: the dense decoder (``python -m training.train``, task ``dense_bce``) on the seen classes;
4. stage 3: MCCL variants (task ``mccl``) from the stage-2 decoder, each an override list;
5. evaluation with ``training.evaluate`` on the test split: mIoU, seen / unseen mIoU, mean activation on
   and off the ground truth; a markdown table, a JSON file and a PNG figure;
6. the model chosen on the dev split becomes the package's default model (``--install-default``).

Everything is driven by ``config/shapes/pipeline.yaml``; ``--set key=value`` overrides it (dotted keys).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from synseg_model import SynSeg, default_checkpoint_path, image_to_tensor, load_checkpoint, save_checkpoint
from training import evaluate as evaluation
from training import prepare_labels
from training import train as trainer
from training.checkpoint import list_checkpoints, trainable_state
from training.config import apply_override
from training.datasets.readers import read_image, read_index_png
from training.shapes import clip_stage, gate, generate, report
from training.shapes.world import load_world

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = clip_stage.REPO_ROOT / "config" / "shapes" / "pipeline.yaml"
RESULTS_JSON = "results.json"


def load_pipeline_config(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """Read the pipeline YAML and apply ``key=value`` overrides.

    Raises:
        ValueError: missing section, or an override that does not parse.
    """
    with open(clip_stage.resolve(path)) as f:
        cfg = yaml.safe_load(f)
    for override in overrides:
        apply_override(cfg, override)
    for key in ("data", "threads", "stage1", "stage2", "stage3", "evaluation", "untrained", "variants",
                "ship", "figure"):
        if key not in cfg:
            raise ValueError(f"{path}: missing key {key!r}")
    return cfg


def _stage_config(section: dict[str, Any]) -> dict[str, Any]:
    """A stage YAML with the section's overrides applied (as a plain dict)."""
    with open(clip_stage.resolve(section["config"])) as f:
        tree = yaml.safe_load(f)
    for override in section.get("overrides") or []:
        apply_override(tree, override)
    return tree


def _write_yaml(tree: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


class Pipeline:
    """The stages of one shapes-world run under ``out``; each stage's outputs are files under it."""

    def __init__(self, cfg: dict[str, Any], out: Path, reuse: bool = False) -> None:
        self.cfg = cfg
        self.out = out
        self.reuse = reuse
        self.chosen: dict[str, str] = {}  # variant with ``choose`` -> the candidate it became
        self.dev_miou: dict[str, float] = {}  # variant with ``select: dev`` -> dev mIoU of the step it kept
        self.selected_step: dict[str, int] = {}  # variant with ``select: dev`` or ``choose`` -> that step
        self.world = load_world(cfg["data"].get("world"))
        self.data = out / "data"
        self.timings: dict[str, float] = {}
        self.stage1_cfg = _stage_config(cfg["stage1"])
        self.model_name, self.clip_arch = clip_stage.register_model_config(self.stage1_cfg["model_config"])

    # ---------------------------------------------------------------------------------------------- data
    @property
    def test_root(self) -> Path:
        return self.data / "val"

    @property
    def dev_root(self) -> Path:
        return self.data / "dev" / "val"

    @property
    def gate_root(self) -> Path:
        return self.data / "gate" / "val"

    @property
    def spec(self) -> Path:
        return self.test_root / "dataset.yaml"

    def make_data(self) -> None:
        """Training shards + test split (seed), dev split (seed + dev_seed_offset), spaCy label sidecars, and
        the gate split (seed + gate_seed_offset), which only the gate reads: a new one retrains nothing."""
        d = self.cfg["data"]
        gate_seed = d["seed"] + d["gate_seed_offset"]
        if self.reuse and self._data_matches(d):
            logger.info("data: reusing %s", self.data)
        else:
            self.reuse = False  # every later stage was made from other data
            generate.generate(self.data, d["train"], d["val"], d["seed"], d.get("world"), d["shard_size"],
                              d["workers"])
            generate.generate(self.data / "dev", 0, d["dev"], d["seed"] + d["dev_seed_offset"], d.get("world"))
            pattern, _ = clip_stage.shard_pattern(self.data / "train")
            prepare_labels.main(["--shards", pattern, "--out", str(self.data / "labels"), "--overwrite"])
        if not (self.reuse and self._split_matches(self.data / "gate", d["gate"], gate_seed)):
            generate.generate(self.data / "gate", 0, d["gate"], gate_seed, d.get("world"))

    def _split_matches(self, root: Path, val: int, seed: int, train: int = 0,
                       shard_size: int | None = None) -> bool:
        """Whether ``root`` holds a finished ``generate`` output of these sizes and seed, in this world."""
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        world = json.loads(json.dumps(self.world.spec))  # as the manifest holds it (JSON keys are strings)
        return (manifest["seed"], manifest["train"], manifest["val"], manifest.get("world_spec")) == \
            (seed, train, val, world) and shard_size in (None, manifest["shard_size"])

    def _data_matches(self, d: dict[str, Any]) -> bool:
        """Whether the shards, test and dev splits and labels under ``self.data`` have these settings."""
        return self._split_matches(self.data, d["val"], d["seed"], d["train"], d["shard_size"]) and \
            self._split_matches(self.data / "dev", d["dev"], d["seed"] + d["dev_seed_offset"]) and \
            (self.data / "labels").is_dir()

    # ------------------------------------------------------------------------------------------- stage 1
    def stage1(self) -> tuple[Path, dict[str, Any]]:
        """Train the CLIP, run the gate on the gate split; raises RuntimeError when the gate fails.

        The returned figures (also ``stage1/gate.json``) are the gate split's, with the test split's under
        ``test``: reported, never decided on.
        """
        checkpoint = clip_stage.train_clip(self.stage1_cfg, self.data / "train", self.out / "stage1",
                                           self.data / "labels", reuse=self.reuse)
        model, tokenizer = gate.load_open_clip(self.model_name, checkpoint)
        mean, std = self.stage1_cfg["open_clip_train"]["image-mean"], self.stage1_cfg["open_clip_train"]["image-std"]

        def figures_on(root: Path) -> dict[str, Any]:
            images, labels = gate.load_voc_split(root)
            return gate.zero_shot_gate(model, tokenizer, images, labels, self.world.class_names,
                                       self.stage1_cfg["gate"], mean, std)

        figures = {**figures_on(self.gate_root), "test": figures_on(self.test_root)}
        (self.out / "stage1" / "gate.json").write_text(json.dumps(figures, indent=1))
        logger.info("stage-1 gate: min AUC %.4f, max text cosine %.3f (%s): %s", figures["min_auc"],
                    figures["max_text_cosine"], "/".join(figures["max_text_cosine_pair"]),
                    "passed" if figures["passed"] else "FAILED: " + "; ".join(figures["failures"]))
        if not figures["passed"] and self.cfg.get("require_gate", True):
            raise RuntimeError("stage-1 CLIP failed the zero-shot gate: " + "; ".join(figures["failures"]))
        return checkpoint, figures

    # ------------------------------------------------------------------------------------- stages 2, 3
    def _train(self, tree: dict[str, Any], name: str, extra: list[str]) -> Path:
        """Run ``python -m training.train`` in-process on a written config; returns its exported model."""
        run_dir = self.out / name
        if run_dir.exists():  # a stale run's step checkpoints would mix with this one's
            shutil.rmtree(run_dir)
        config_path = _write_yaml(tree, run_dir.with_name(run_dir.name + ".yaml"))
        argv = ["--config", str(config_path), *extra, f"train.out_dir={run_dir}",
                f"train.threads={self.cfg['threads']}"]
        logger.info("python -m training.train %s", " ".join(argv))
        start = time.perf_counter()
        result = trainer.main(argv)
        self.timings[name] = time.perf_counter() - start
        if result is None or result.export_path is None:
            raise RuntimeError(f"training run {name} exported no model (see {run_dir}/train.log)")
        return result.export_path

    def stage2(self, clip_checkpoint: Path) -> Path:
        """Dense BCE decoder on the seen classes; returns its exported model (CLIP included)."""
        tree = _stage_config(self.cfg["stage2"])
        tree["model"]["clip_config"] = self.clip_arch
        tree["model"]["clip_pretrained"] = str(clip_checkpoint)
        tree["data"]["shards"] = clip_stage.shard_pattern(self.data / "train")[0]
        export = self.out / "stage2" / trainer.EXPORT_NAME
        # Same settings, and trained after the CLIP it names (a retrained stage 1 writes the same path).
        if self.reuse and export.is_file() and (self.out / "stage2.yaml").is_file() and \
                yaml.safe_load((self.out / "stage2.yaml").read_text()) == tree and \
                export.stat().st_mtime > clip_checkpoint.stat().st_mtime:
            logger.info("stage 2: reusing %s", export)
            return export
        return self._train(tree, "stage2", [])

    def untrained(self, stage2_model: Path) -> Path:
        """Row (a): the stage-2 architecture and CLIP with a freshly initialised decoder and projector."""
        model = load_checkpoint(stage2_model)
        torch.manual_seed(self.cfg["untrained"]["seed"])
        fresh = SynSeg(model.config.replace(clip_pretrained=None))
        fresh.clip.load_state_dict(model.clip.state_dict())
        return save_checkpoint(fresh, self.out / "untrained" / "model.safetensors",
                               card={"row": "untrained decoder", "seed": self.cfg["untrained"]["seed"]})

    def stage3(self, variant: str, init: Path) -> Path:
        """One MCCL variant from ``init``.

        With ``select: dev`` the step checkpoint best on dev is kept; with ``step_of: V`` the checkpoint at the
        step kept for variant V (its step budget), or the whole run when V kept step 0 (no MCCL to compare with).
        """
        spec = self.cfg["variants"][variant]
        tree = _stage_config(self.cfg["stage3"])
        tree["init_checkpoint"] = str(init)
        tree["data"]["shards"] = clip_stage.shard_pattern(self.data / "train")[0]
        tree["data"]["labels_dir"] = str(self.data / "labels")
        export = self._train(tree, f"stage3/{variant}", self.variant_overrides(variant))
        run_dir = self.out / "stage3" / variant
        if spec.get("select") == "dev":
            export, self.dev_miou[variant], self.selected_step[variant] = self.select_on_dev(export, init, run_dir)
        elif spec.get("step_of") and self.selected_step[spec["step_of"]] > 0:
            step = self.selected_step[spec["step_of"]]
            export = self.save_selected(init, export, run_dir, step, self.step_states(run_dir)[step],
                                        step_of=spec["step_of"])
            logger.info("%s: step %d, the step kept for %s", variant, step, spec["step_of"])
        return export

    def variant_overrides(self, variant: str) -> list[str]:
        """A variant's overrides: those of its ``base`` variant (if any), then its own."""
        if variant in self.chosen:
            return self.variant_overrides(self.chosen[variant])
        spec = self.cfg["variants"][variant]
        base = self.variant_overrides(spec["base"]) if spec.get("base") else []
        return base + list(spec.get("overrides") or [])

    def choose(self, variant: str) -> str:
        """The candidate of ``variant``'s ``choose`` list with the best dev mIoU; remembered for its ablations.

        Raises:
            ValueError: a candidate has not run yet or has no ``select: dev``.
        """
        candidates = self.cfg["variants"][variant]["choose"]
        missing = [c for c in candidates if c not in self.dev_miou]
        if missing:
            raise ValueError(f"{variant}: candidates {missing} must run before it, with select: dev")
        name = max(candidates, key=lambda c: self.dev_miou[c])
        self.chosen[variant] = name
        self.selected_step[variant] = self.selected_step[name]
        logger.info("%s: %s (dev mIoU %s)", variant, name, {c: round(self.dev_miou[c], 2) for c in candidates})
        return name

    @staticmethod
    def save_selected(init: Path, export: Path, run_dir: Path, step: int, state: dict[str, torch.Tensor],
                      **card: Any) -> Path:
        """``init`` with a step's trainable weights, as ``run_dir/selected.safetensors`` with the run's card."""
        model = load_checkpoint(init)
        model.load_trainable_state_dict(state, f"{run_dir} step {step}")
        card = dict(load_checkpoint(export).model_card, selected_step=step, **card)
        return save_checkpoint(model, run_dir / "selected.safetensors", card=card)

    @staticmethod
    def step_states(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
        """The trainable weights of a run's step checkpoints, by step."""
        states = (torch.load(path, map_location="cpu", weights_only=True) for path in list_checkpoints(run_dir))
        return {int(state["step"]): state["model"] for state in states}

    def select_on_dev(self, export: Path, init: Path, run_dir: Path) -> tuple[Path, float, int]:
        """Among the run's step checkpoints (and its start), the one with the best dev mIoU.

        Returns the path of that model in the foundation format (``selected.safetensors``), its dev mIoU
        and its step.
        """
        model = load_checkpoint(init)
        candidates = {0: trainable_state(model)}
        candidates.update(self.step_states(run_dir))
        curve = {}
        for step, state in sorted(candidates.items()):
            model.load_trainable_state_dict(state, f"{run_dir} step {step}")
            result = self.score(model, self.dev_root)
            curve[step] = {k: result[k] for k in ("miou", "miou_seen", "miou_unseen", "act_on", "act_off")}
        scores = {step: c["miou"] for step, c in curve.items()}
        best = max(scores, key=lambda s: scores[s])
        (run_dir / "dev_selection.json").write_text(json.dumps({"dev_by_step": curve, "chosen_step": best},
                                                               indent=1))
        logger.info("%s: dev mIoU by step %s -> step %d", run_dir.name,
                    {k: round(v, 2) for k, v in scores.items()}, best)
        selected = self.save_selected(init, export, run_dir, best, candidates[best], dev_miou_by_step=scores)
        return selected, scores[best], best

    # ------------------------------------------------------------------------------------- evaluation
    def score(self, model: SynSeg, root: Path) -> dict[str, Any]:
        """``training.evaluate.evaluate_model`` on a VOC-layout split, plus seen/unseen mIoU and activations."""
        ev = self.cfg["evaluation"]
        result = evaluation.evaluate_model(model, self.spec, root, limit=ev.get("limit"), device="cpu",
                                           short_side=ev["short_side"], crop_size=ev["crop_size"],
                                           stride=ev["stride"])
        seen = set(_stage_config(self.cfg["stage2"])["data"]["classes"])
        ious = result["per_class"]
        result["miou_seen"] = _mean([ious[c] for c in ious if c in seen])
        result["miou_unseen"] = _mean([ious[c] for c in ious if c not in seen])
        result.update(activation_on_off(model, root, self.world.class_names, ev.get("limit")))
        return result

    def evaluate_row(self, name: str, checkpoint: Path) -> dict[str, Any]:
        """Test and dev results of one checkpoint."""
        model = load_checkpoint(checkpoint)
        return {"checkpoint": str(checkpoint), "test": self.score(model, self.test_root),
                "dev": self.score(model, self.dev_root), "model_card": model.model_card}

    # --------------------------------------------------------------------------------------- the run
    def run(self, install_default: bool = False) -> dict[str, Any]:
        """All stages; returns (and writes to ``results.json``) every row's figures."""
        start = time.perf_counter()
        torch.set_num_threads(self.cfg["threads"])
        tick = time.perf_counter()
        self.make_data()
        self.timings["data"] = time.perf_counter() - tick
        tick = time.perf_counter()
        clip_checkpoint, gate_figures = self.stage1()
        self.timings["stage1"] = time.perf_counter() - tick
        stage2_model = self.stage2(clip_checkpoint)
        checkpoints = {"untrained": self.untrained(stage2_model), "stage2": stage2_model}
        for variant, spec in self.cfg["variants"].items():
            if spec.get("choose"):
                checkpoints[variant] = checkpoints[self.choose(variant)]
            else:
                checkpoints[variant] = self.stage3(variant, checkpoints[spec.get("init", "stage2")])
        tick = time.perf_counter()
        rows = {name: self.evaluate_row(name, path) for name, path in checkpoints.items()}
        self.timings["evaluation"] = time.perf_counter() - tick
        shipped = self.choose_default(rows)
        results = {
            "rows": rows, "row_labels": self.row_labels(), "gate": gate_figures, "shipped": shipped,
            "chosen": self.chosen,
            "seen_classes": _stage_config(self.cfg["stage2"])["data"]["classes"],
            "classes": self.world.class_names, "config": self.cfg, "timings_s": self.timings,
            "machine": {"cpu_threads": self.cfg["threads"], "platform": platform.platform()},
        }
        report.write_figure(self, rows, self.out / "examples.png")
        self.timings["total"] = time.perf_counter() - start
        (self.out / RESULTS_JSON).write_text(json.dumps(results, indent=1, default=str))
        (self.out / "results.md").write_text(report.results_markdown(results))
        if install_default:
            self.install_default(rows, shipped, gate_figures)
        logger.info("shapes world done in %.0f s; results in %s", self.timings["total"], self.out / "results.md")
        return results

    def row_labels(self) -> dict[str, str]:
        labels = {"untrained": "(a) untrained decoder", "stage2": "(b) stage 2 alone (dense BCE)"}
        labels.update({name: spec["row"] for name, spec in self.cfg["variants"].items()})
        for name, candidate in self.chosen.items():
            labels[name] += f" = {candidate}"
        return labels

    def choose_default(self, rows: dict[str, dict[str, Any]]) -> str:
        """The row to ship: the candidate (``ship.candidates``) with the best dev mIoU."""
        candidates = self.cfg["ship"]["candidates"]
        return max(candidates, key=lambda name: rows[name]["dev"]["miou"])

    def install_default(self, rows: dict[str, dict[str, Any]], name: str, gate_figures: dict[str, Any]) -> Path:
        """Write the chosen model, with its model card, to ``default_checkpoint_path()``."""
        model = load_checkpoint(rows[name]["checkpoint"])
        test = rows[name]["test"]
        card = {
            "name": "synseg-shapes",
            "description": "SynSeg trained end to end in the synthetic shapes world (issue 7): a small CLIP "
                           "(open_clip_train), a dense BCE decoder on the seen classes, then "
                           f"{self.row_labels()[name]}. Offline default model; it knows only this world.",
            "recipe": self.row_labels()[name],
            "row": name,
            "classes": self.world.class_names,
            "seen_in_stage2": _stage_config(self.cfg["stage2"])["data"]["classes"],
            "data": {k: self.cfg["data"][k] for k in ("seed", "train", "val", "dev", "dev_seed_offset", "gate",
                                                      "gate_seed_offset")},
            "world": self.world.spec,
            "stage1": self.stage1_cfg,
            "stage2": _stage_config(self.cfg["stage2"]),
            "stage3": _stage_config(self.cfg["stage3"]) if name in self.cfg["variants"] else None,
            "stage3_overrides": self.variant_overrides(name) if name in self.cfg["variants"] else None,
            "training_card": rows[name]["model_card"],
            "gate": {k: gate_figures[k] for k in ("num_images", "auc", "min_auc", "max_text_cosine",
                                                  "max_text_cosine_pair", "passed")},
            "gate_test_split_auc": gate_figures["test"]["auc"],
            "metrics": {"test_miou": test["miou"], "test_miou_seen": test["miou_seen"],
                        "test_miou_unseen": test["miou_unseen"], "test_aacc": test["aacc"],
                        "test_per_class_iou": test["per_class"], "dev_miou": rows[name]["dev"]["miou"],
                        "num_test_images": test["num_images"]},
            "evaluation": {k: self.cfg["evaluation"][k] for k in ("short_side", "crop_size", "stride")},
        }
        # The frozen CLIP travels in float16 (cast back on load) to keep the shipped file small.
        card["clip_storage"] = "float16"
        path = save_checkpoint(model, default_checkpoint_path(), card=card, clip_dtype=torch.float16)
        logger.info("installed %s (%s) as the default model: %s (%.1f MB)", name, self.row_labels()[name], path,
                    path.stat().st_size / 2**20)
        return path


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


@torch.no_grad()
def activation_on_off(model: SynSeg, root: Path, class_names: list[str], limit: int | None = None
                      ) -> dict[str, float]:
    """Mean activation sigmoid(logits) on and off the ground truth of each class, over a VOC-layout split.

    ``act_on``: mean over (image, class present) pairs of the mean activation inside the class's pixels;
    ``act_off``: mean over (image, class) pairs of the mean activation outside them. Collapse shows as both
    going to 1; a decoder that localises keeps act_on high and act_off low.
    """
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()[:limit]
    text = model.encode_text(class_names)
    on, off = [], []
    for i in ids:
        image = image_to_tensor(read_image(root / "JPEGImages" / f"{i}.jpg"), model.config.mean, model.config.std)
        label = torch.from_numpy(read_index_png(root / "SegmentationClass" / f"{i}.png").astype(np.int64))
        act = torch.sigmoid(model(image, text))[0]                         # (K, H, W)
        for k in range(len(class_names)):
            inside = label == k
            if inside.any():
                on.append(float(act[k][inside].mean()))
            if (~inside).any():
                off.append(float(act[k][~inside].mean()))
    return {"act_on": float(np.mean(on)), "act_off": float(np.mean(off))}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the shapes world end to end (data, CLIP, dense decoder, "
                                                 "MCCL variants, evaluation, table and figure). It stops after "
                                                 "stage 1 if the CLIP fails the zero-shot gate on the gate split "
                                                 "(--set require_gate=false goes on).")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline YAML")
    parser.add_argument("--out", type=Path, default=Path("runs/shapes"), help="output folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline config key (dotted), e.g. data.train=2000; repeatable")
    parser.add_argument("--reuse", action="store_true",
                        help="keep data, finished stage-1 phases and the stage-2 model already in --out (same "
                             "settings) instead of redoing them; stage 3 and the evaluation are redone")
    parser.add_argument("--install-default", action="store_true",
                        help="write the model chosen on the dev split to synseg_model/weights/")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    cfg = load_pipeline_config(args.config, args.overrides)
    return Pipeline(copy.deepcopy(cfg), args.out, reuse=args.reuse).run(install_default=args.install_default)
