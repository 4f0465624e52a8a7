"""``python -m training.shapes run``: SynSeg's whole recipe in the shapes world, from nothing to a table.

1. data: training shards, held-out test, dev and gate splits (VOC layout), spaCy labels;
2. stage 1: the small CLIP with open_clip_train (or the CLIP of an existing checkpoint, ``stage1_from``), then
   the zero-shot gate on the gate split (the run stops if it fails) and the same figures on the test split;
3. stage 2: the dense decoder (``python -m training.train``, task ``dense_bce``) on the seen classes;
4. stage 3: MCCL variants (task ``mccl``) from the stage-2 decoder, each an override list, each on one or
   several training seeds;
5. every run scored on the test and dev splits (``training.shapes.score``: mIoU, seen / unseen mIoU, mean
   activation on and off the ground truth); a markdown table with the seeds as columns, a JSON file and a
   PNG figure;
6. the run chosen on the dev split becomes the package's default model (``--install-default``).

Everything is driven by ``config/shapes/pipeline.yaml`` (``training.shapes.config``); ``--set key=value``
overrides it (dotted keys).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from synseg_model import SynSeg, default_checkpoint_path, load_checkpoint, save_checkpoint
from training import prepare_labels
from training import train as trainer
from training.checkpoint import list_checkpoints, trainable_state
from training.config import ConfigError, apply_override, load_config
from training.shapes import clip_stage, gate, generate, report
from training.shapes.config import PipelineConfig, StageSection, Variant, load_pipeline_config
from training.shapes.score import score_split
from training.shapes.world import load_world

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = clip_stage.REPO_ROOT / "config" / "shapes" / "pipeline.yaml"
RESULTS_JSON = "results.json"
SUMMARY_METRICS = ("miou", "miou_seen", "miou_unseen", "aacc", "act_on", "act_off", "mask_miou", "mask_miou_seen",
                   "mask_miou_unseen")


def stage_config(section: StageSection) -> dict[str, Any]:
    """A stage YAML with the section's overrides applied (as a plain dict)."""
    tree = yaml.safe_load(clip_stage.resolve(section.config).read_text())
    for override in section.overrides:
        apply_override(tree, override)
    return tree


def _write_yaml(tree: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@dataclass
class Run:
    """One trained model of a row: its checkpoint and, when a step was selected, that step and its dev mIoU."""

    checkpoint: Path
    step: int | None = None
    dev_miou: float | None = None


class Pipeline:
    """The stages of one shapes-world run under ``out``; each stage's outputs are files under it."""

    def __init__(self, cfg: PipelineConfig, out: Path, reuse: bool = False) -> None:
        self.cfg = cfg
        self.out = out
        self.reuse = reuse
        self.chosen: dict[str, str] = {}  # variant with ``choose`` -> the candidate it became
        self.runs: dict[str, dict[int, Run]] = {}  # row -> training seed -> run
        self.world = load_world(cfg.data.world)
        self.data = out / "data"
        self.timings: dict[str, float] = {}
        self.stage1_cfg = stage_config(cfg.stage1)
        self.seen_classes: list[str] = stage_config(cfg.stage2)["data"]["classes"]
        self.model_name, self.clip_arch = clip_stage.register_model_config(self.stage1_cfg["model_config"])
        self.check_training_configs()

    def check_training_configs(self) -> None:
        """Build the training config of stage 2 and of every stage-3 variant now, so that a bad key in any
        of them stops the pipeline before any work, not an hour into it.

        Raises:
            ConfigError: naming the stage or variant's config file and the key.
        """
        run_time = ["data.shards=<run time>", "data.labels_dir=<run time>"]  # what stage2/stage3 fill in
        load_config(clip_stage.resolve(self.cfg.stage2.config), [*self.cfg.stage2.overrides, *run_time[:1]])
        for variant, spec in self.cfg.variants.items():
            if spec.choose:
                continue
            try:
                load_config(clip_stage.resolve(self.cfg.stage3.config),
                            [*self.cfg.stage3.overrides, *run_time, *self.variant_overrides(variant)])
            except ConfigError as exc:
                raise ConfigError(f"variants.{variant}: {exc}") from None

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

    def make_data(self) -> None:
        """Training shards + test split (seed), dev split (seed + dev_seed_offset), spaCy label sidecars, and
        the gate split (seed + gate_seed_offset), which only the gate reads: a new one retrains nothing."""
        d = self.cfg.data
        gate_seed = d.seed + d.gate_seed_offset
        if self.reuse and self._data_matches():
            logger.info("data: reusing %s", self.data)
        else:
            self.reuse = False  # every later stage was made from other data
            generate.generate(self.data, d.train, d.val, d.seed, d.world, d.shard_size, d.workers)
            generate.generate(self.data / "dev", 0, d.dev, d.seed + d.dev_seed_offset, d.world)
            pattern, _ = clip_stage.shard_pattern(self.data / "train")
            prepare_labels.main(["--shards", pattern, "--out", str(self.data / "labels"), "--overwrite"])
        if not (self.reuse and self._split_matches(self.data / "gate", d.gate, gate_seed)):
            generate.generate(self.data / "gate", 0, d.gate, gate_seed, d.world)

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

    def _data_matches(self, d: Any = None) -> bool:
        """Whether the shards, test and dev splits and labels under ``self.data`` have these settings."""
        d = d or self.cfg.data
        return self._split_matches(self.data, d.val, d.seed, d.train, d.shard_size) and \
            self._split_matches(self.data / "dev", d.dev, d.seed + d.dev_seed_offset) and \
            (self.data / "labels").is_dir()

    # ------------------------------------------------------------------------------------------- stage 1
    def stage1(self) -> tuple[Path, dict[str, Any]]:
        """Train the CLIP (or take it from ``stage1_from``), run the gate on the gate split; raises
        RuntimeError when the gate fails.

        The returned figures (also ``stage1/gate.json``) are the gate split's, with the test split's under
        ``test``: reported, never decided on.
        """
        if self.cfg.stage1_from:
            checkpoint = self.out / "stage1" / "from_checkpoint.pt"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            clip = load_checkpoint(self.cfg.stage1_from).clip.state_dict()
            if not (checkpoint.is_file() and _same_tensors(torch.load(checkpoint)["state_dict"], clip)):
                # open_clip's checkpoint layout, so that the gate and stage 2 read it as a trained stage 1;
                # rewritten only when it changes, since later stages are reused only if newer than it.
                torch.save({"state_dict": clip}, checkpoint)
            logger.info("stage 1: the CLIP of %s (not trained here)", self.cfg.stage1_from)
        else:
            checkpoint = clip_stage.train_clip(self.stage1_cfg, self.data / "train", self.out / "stage1",
                                               self.data / "labels", reuse=self.reuse)
        model, tokenizer = gate.load_open_clip(self.model_name, checkpoint)
        oc = self.stage1_cfg["open_clip_train"]

        def figures_on(root: Path) -> dict[str, Any]:
            images, labels = gate.load_voc_split(root)
            return gate.zero_shot_gate(model, tokenizer, images, labels, self.world.class_names,
                                       self.stage1_cfg["gate"], oc["image-mean"], oc["image-std"])

        figures = {**figures_on(self.gate_root), "test": figures_on(self.test_root)}
        (self.out / "stage1" / "gate.json").write_text(json.dumps(figures, indent=1))
        logger.info("stage-1 gate: min AUC %.4f, max text cosine %.3f (%s): %s", figures["min_auc"],
                    figures["max_text_cosine"], "/".join(figures["max_text_cosine_pair"]),
                    "passed" if figures["passed"] else "FAILED: " + "; ".join(figures["failures"]))
        if not figures["passed"] and self.cfg.require_gate:
            raise RuntimeError("stage-1 CLIP failed the zero-shot gate: " + "; ".join(figures["failures"]))
        return checkpoint, figures

    # ------------------------------------------------------------------------------------- stages 2, 3
    def _train(self, tree: dict[str, Any], name: str, extra: list[str]) -> Path:
        """Run ``python -m training.train`` in-process on a written config; returns its exported model."""
        run_dir = self.out / name
        config_path = _write_yaml(tree, run_dir.with_name(run_dir.name + ".yaml"))
        argv = ["--config", str(config_path), *extra, f"train.out_dir={run_dir}", f"train.threads={self.cfg.threads}"]
        export = run_dir / trainer.EXPORT_NAME
        if self.reuse and self._finished_with(run_dir, argv, tree.get("init_checkpoint")):
            logger.info("%s: reusing %s (same resolved config, trained after its start)", name, export)
            return export
        if run_dir.exists():  # a stale run's step checkpoints would mix with this one's
            shutil.rmtree(run_dir)
        logger.info("python -m training.train %s", " ".join(argv))
        start = time.perf_counter()
        result = trainer.main(argv)
        self.timings[name] = time.perf_counter() - start
        if result is None or result.export_path is None:
            raise RuntimeError(f"training run {name} exported no model (see {run_dir}/train.log)")
        return result.export_path

    @staticmethod
    def _finished_with(run_dir: Path, argv: list[str], init: str | None) -> bool:
        """Whether ``run_dir`` holds a finished run of this command line (the resolved config training.train
        wrote equals the one it would write now) that is newer than the model it started from."""
        export, written = run_dir / trainer.EXPORT_NAME, run_dir / trainer.RESOLVED_CONFIG_NAME
        if not (export.is_file() and written.is_file()):
            return False
        if init and Path(init).is_file() and export.stat().st_mtime <= Path(init).stat().st_mtime:
            return False
        args = trainer.get_args_parser().parse_args(argv)
        try:  # read back through the config code, so that options added since then compare at their defaults
            finished = load_config(written).to_dict()
        except ValueError as exc:  # ConfigError included
            logger.warning("%s: not reused, its config no longer loads: %s", run_dir, exc)
            return False
        return finished == load_config(args.config, args.overrides).to_dict()

    def stage2(self, clip_checkpoint: Path) -> Path:
        """Dense BCE decoder on the seen classes; returns its exported model (CLIP included)."""
        tree = stage_config(self.cfg.stage2)
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
        torch.manual_seed(self.cfg.untrained_seed)
        fresh = SynSeg(model.config.replace(clip_pretrained=None))
        fresh.clip.load_state_dict(model.clip.state_dict())
        return save_checkpoint(fresh, self.out / "untrained" / "model.safetensors",
                               card={"row": "untrained decoder", "seed": self.cfg.untrained_seed})

    def seeds_of(self, variant: str) -> list[int]:
        """The training seeds a variant runs on (a chosen row: those of its candidates)."""
        spec = self.cfg.variants[variant]
        count = min(self.cfg.variants[c].seeds for c in spec.choose) if spec.choose else spec.seeds
        return self.cfg.seeds[:count]

    def stage3(self, variant: str, seed: int, init: Path) -> Run:
        """One MCCL variant on one training seed, from ``init``.

        With ``select: dev`` the step checkpoint best on dev is kept; with ``step_of: V`` the checkpoint at the
        step V kept on the same seed, or the whole run when V kept step 0 (no MCCL to compare with).
        """
        spec = self.cfg.variants[variant]
        tree = stage_config(self.cfg.stage3)
        tree["init_checkpoint"] = str(init)
        tree["data"]["shards"] = clip_stage.shard_pattern(self.data / "train")[0]
        tree["data"]["labels_dir"] = str(self.data / "labels")
        name = f"stage3/{variant}/seed{seed}"
        export = self._train(tree, name, [*self.variant_overrides(variant), f"train.seed={seed}"])
        run_dir = self.out / name
        if spec.select == "dev":
            return self.select_on_dev(export, init, run_dir)
        if spec.dev_curve:
            self.dev_curve(init, run_dir)
        if spec.step_of and self.runs[spec.step_of][seed].step:
            step = self.runs[spec.step_of][seed].step
            logger.info("%s seed %d: step %d, the step kept for %s", variant, seed, step, spec.step_of)
            return Run(self.save_selected(init, export, run_dir, step, self.step_states(run_dir)[step],
                                          step_of=spec.step_of), step)
        return Run(export)

    def variant_overrides(self, variant: str) -> list[str]:
        """A variant's overrides: those of its ``base`` variant (if any), then its own."""
        if variant in self.chosen:
            return self.variant_overrides(self.chosen[variant])
        spec = self.cfg.variants[variant]
        return (self.variant_overrides(spec.base) if spec.base else []) + list(spec.overrides)

    def choose(self, variant: str) -> str:
        """The candidate of ``variant``'s ``choose`` list with the best mean dev mIoU over its seeds.

        Raises:
            ValueError: a candidate has not run yet.
        """
        candidates = self.cfg.variants[variant].choose
        missing = [c for c in candidates if c not in self.runs]
        if missing:
            raise ValueError(f"{variant}: candidates {missing} must run before it")
        dev = {c: statistics.mean(run.dev_miou for run in self.runs[c].values()) for c in candidates}
        name = max(candidates, key=dev.get)
        self.chosen[variant] = name
        self.runs[variant] = self.runs[name]
        logger.info("%s: %s (mean dev mIoU %s)", variant, name, {c: round(v, 2) for c, v in dev.items()})
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

    def dev_curve(self, init: Path, run_dir: Path) -> tuple[dict[int, dict[str, float]], dict]:
        """Dev figures of the run's start and of each of its step checkpoints (``dev_curve.json``), and the
        trainable weights by step."""
        model = load_checkpoint(init)
        states = {0: trainable_state(model), **self.step_states(run_dir)}
        curve = {}
        for step, state in sorted(states.items()):
            model.load_trainable_state_dict(state, f"{run_dir} step {step}")
            result = self.score(model, self.dev_root)
            curve[step] = {k: result[k] for k in ("miou", "miou_seen", "miou_unseen", "act_on", "act_off")}
        (run_dir / "dev_curve.json").write_text(json.dumps(curve, indent=1))
        logger.info("%s: dev mIoU by step %s", run_dir, {k: round(c["miou"], 2) for k, c in curve.items()})
        return curve, states

    def select_on_dev(self, export: Path, init: Path, run_dir: Path) -> Run:
        """Among the run's step checkpoints (and its start), the one with the best dev mIoU, saved in the
        foundation format (``selected.safetensors``); the dev curve goes to ``dev_curve.json``."""
        curve, states = self.dev_curve(init, run_dir)
        scores = {step: c["miou"] for step, c in curve.items()}
        best = max(scores, key=scores.get)
        logger.info("%s: step %d kept", run_dir, best)
        selected = self.save_selected(init, export, run_dir, best, states[best], dev_miou_by_step=scores)
        return Run(selected, best, scores[best])

    # ------------------------------------------------------------------------------------- evaluation
    def score(self, model: SynSeg, root: Path) -> dict[str, Any]:
        """``training.shapes.score.score_split`` on a VOC-layout split, seen/unseen from stage 2's classes."""
        return score_split(model, root, self.seen_classes, self.cfg.evaluation_limit)

    def evaluate_run(self, run: Run) -> dict[str, Any]:
        """Test and dev results of one run."""
        model = load_checkpoint(run.checkpoint)
        return {"checkpoint": str(run.checkpoint), "selected_step": run.step,
                "test": self.score(model, self.test_root), "dev": self.score(model, self.dev_root),
                "model_card": model.model_card}

    # --------------------------------------------------------------------------------------- the run
    def run(self, install_default: bool = False) -> dict[str, Any]:
        """All stages; returns (and writes to ``results.json``) every row's figures."""
        start = time.perf_counter()
        torch.set_num_threads(self.cfg.threads)
        tick = time.perf_counter()
        self.make_data()
        self.timings["data"] = time.perf_counter() - tick
        tick = time.perf_counter()
        clip_checkpoint, gate_figures = self.stage1()
        self.timings["stage1"] = time.perf_counter() - tick
        stage2_model = self.stage2(clip_checkpoint)
        self.runs = {"untrained": {self.cfg.seeds[0]: Run(self.untrained(stage2_model))},
                     "stage2": {self.cfg.seeds[0]: Run(stage2_model)}}
        for variant, spec in self.cfg.variants.items():
            if spec.choose:
                self.choose(variant)
                continue
            self.runs[variant] = {}
            for seed in self.seeds_of(variant):
                init = self.runs[spec.init][self.cfg.seeds[0] if spec.init in ("stage2", "untrained") else seed]
                self.runs[variant][seed] = self.stage3(variant, seed, init.checkpoint)
        tick = time.perf_counter()
        rows = {name: summarise({seed: self.evaluate_run(run) for seed, run in runs.items()})
                for name, runs in self.runs.items()}
        self.timings["evaluation"] = time.perf_counter() - tick
        shipped = self.choose_default(rows)
        results = {
            "rows": rows, "row_labels": self.row_labels(), "gate": gate_figures, "shipped": shipped,
            "ship_metric": self.cfg.ship.metric, "chosen": self.chosen, "seeds": self.cfg.seeds,
            "seen_classes": self.seen_classes, "classes": self.world.class_names, "config": self.cfg.to_dict(),
            "timings_s": self.timings,
            "machine": {"cpu_threads": self.cfg.threads, "platform": platform.platform()},
        }
        figure_rows = [(self.row_labels()[n], Path(_first_run(rows[n])["checkpoint"]))
                       for n in self.cfg.figure.rows if n in rows]
        report.write_figure(self.test_root, self.world.class_names, figure_rows, self.out / "examples.png",
                            self.cfg.figure.images, self.cfg.figure.activation_maps)
        self.timings["total"] = time.perf_counter() - start
        (self.out / RESULTS_JSON).write_text(json.dumps(results, indent=1, default=str))
        (self.out / "results.md").write_text(report.results_markdown(results))
        if install_default:
            self.install_default(rows, shipped, gate_figures)
        logger.info("shapes world done in %.0f s; results in %s", self.timings["total"], self.out / "results.md")
        return results

    def row_labels(self) -> dict[str, str]:
        labels = {"untrained": "(a) untrained decoder", "stage2": "(b) stage 2 alone (dense BCE)"}
        labels.update({name: spec.row for name, spec in self.cfg.variants.items()})
        for name, candidate in self.chosen.items():
            labels[name] += f" = {candidate}"
        return labels

    def choose_default(self, rows: dict[str, dict[str, Any]]) -> tuple[str, int]:
        """The run to ship: among the runs of the rows in ``ship.candidates``, the best on dev by
        ``ship.metric``."""
        runs = [(name, seed) for name in self.cfg.ship.candidates for seed in rows[name]["runs"]]
        return max(runs, key=lambda r: rows[r[0]]["runs"][r[1]]["dev"][self.cfg.ship.metric])

    def install_default(self, rows: dict[str, dict[str, Any]], shipped: tuple[str, int],
                        gate_figures: dict[str, Any]) -> Path:
        """Write the chosen run's model, with its model card, to ``default_checkpoint_path()``."""
        name, seed = shipped
        row, run = rows[name], rows[name]["runs"][seed]
        model = load_checkpoint(run["checkpoint"])
        variant: Variant | None = self.cfg.variants.get(self.chosen.get(name, name))
        test = run["test"]
        card = {
            "name": "synseg-shapes",
            "description": "SynSeg trained end to end in the synthetic shapes world: a small CLIP "
                           "(open_clip_train), a dense BCE decoder on the seen classes, then "
                           f"{self.row_labels()[name]}. Offline default model; it knows only this world.",
            "recipe": self.row_labels()[name],
            "row": name,
            "seed": seed,
            "classes": self.world.class_names,
            "seen_in_stage2": self.seen_classes,
            "unseen_in_stage2": [c for c in self.world.class_names if c not in self.seen_classes],
            "data": {k: getattr(self.cfg.data, k) for k in ("seed", "train", "val", "dev", "dev_seed_offset",
                                                             "gate", "gate_seed_offset")},
            "world": self.world.spec,
            "stage1": self.stage1_cfg,
            "stage1_from": self.cfg.stage1_from,  # set: the CLIP came from this checkpoint, trained earlier
            "stage2": stage_config(self.cfg.stage2),
            "stage3": stage_config(self.cfg.stage3) if variant else None,
            "stage3_overrides": [*self.variant_overrides(name), f"train.seed={seed}"] if variant else None,
            "training_card": run["model_card"],
            "gate": {k: gate_figures[k] for k in ("num_images", "auc", "min_auc", "max_text_cosine",
                                                  "max_text_cosine_pair", "passed")},
            "gate_test_split_auc": gate_figures["test"]["auc"],
            "metrics": {"test_miou": test["miou"], "test_miou_seen": test["miou_seen"],
                        "test_miou_unseen": test["miou_unseen"], "test_aacc": test["aacc"],
                        "test_per_class_iou": test["per_class"], "dev_miou": run["dev"]["miou"],
                        "test_mask_miou_seen": test["mask_miou_seen"],
                        "test_mask_miou_unseen": test["mask_miou_unseen"], "dev_mask_miou": run["dev"]["mask_miou"],
                        "num_test_images": test["num_images"], "row_over_seeds": row["summary"]},
            "evaluation": "one 64-px window per image, sigmoid, argmax over the 11 classes (training.evaluate "
                          "with short_side = crop_size = stride = 64); mask_miou: each class's mask "
                          "activation > 0.5, as the ROS node publishes",
            "chosen_by": f"dev {self.cfg.ship.metric}",
            # The frozen CLIP travels in float16 (cast back on load) to keep the shipped file small.
            "clip_storage": "float16",
        }
        path = save_checkpoint(model, default_checkpoint_path(), card=card, clip_dtype=torch.float16)
        logger.info("installed %s seed %d (%s) as the default model: %s (%.1f MB)", name, seed,
                    self.row_labels()[name], path, path.stat().st_size / 2**20)
        return path


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _first_run(row: dict[str, Any]) -> dict[str, Any]:
    return next(iter(row["runs"].values()))


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A row: its runs by seed and, per metric, the mean and standard deviation over the seeds (test split),
    plus the dev mIoU's mean."""
    summary = {}
    for split in ("test", "dev"):
        for metric in SUMMARY_METRICS:
            values = [run[split][metric] for run in runs.values() if run[split][metric] is not None]
            if values:
                summary[f"{split}_{metric}"] = {"mean": statistics.mean(values),
                                                "sd": statistics.stdev(values) if len(values) > 1 else None}
    return {"runs": runs, "summary": summary}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.shapes run",
        description="Run the shapes world end to end (data, CLIP, dense decoder, MCCL variants on several "
                    "seeds, evaluation, table and figure). It stops after stage 1 if the CLIP fails the "
                    "zero-shot gate on the gate split (--set require_gate=false goes on).")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="pipeline YAML")
    parser.add_argument("--out", type=Path, default=Path("runs/shapes"), help="output folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline config key (dotted), e.g. data.train=2000; repeatable")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the data, finished stage-1 phases, the stage-2 model and finished stage-3 runs "
                             "already in --out that were made with the same settings (and after what they start "
                             "from) instead of redoing them; the evaluation is redone")
    parser.add_argument("--install-default", action="store_true",
                        help="write the model chosen on the dev split to synseg_model/weights/")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    cfg = load_pipeline_config(args.config, args.overrides)
    return Pipeline(cfg, args.out, reuse=args.reuse).run(install_default=args.install_default)
