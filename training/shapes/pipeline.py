"""``python -m training.shapes run``: SynSeg's whole recipe in the shapes world, from nothing to a table.

1. data (``data_stage``): training shards, held-out test, dev and gate splits (VOC layout), spaCy labels;
2. stage 1 (``clip_stage``): the small CLIP with open_clip_train (or the CLIP of an existing checkpoint,
   ``stage1_from``), then the zero-shot gate on the gate split (the run stops if it fails) and the same figures
   on the test split;
3. stage 2 (``training_runs``): the dense decoder (``training.train``, task ``dense_bce``) on the seen classes;
4. stage 3 (``variants``): MCCL variants (task ``mccl``) from the stage-2 decoder, each an override list, each
   on one or several training seeds;
5. every run scored on the test and dev splits (``results``: mIoU, seen / unseen mIoU, mean activation on and
   off the ground truth, the node's masks); a markdown table with the seeds as columns, a JSON file and a PNG
   figure (``report``);
6. the run chosen on the dev split becomes the package's default model (``install``, ``--install-default``).

Everything is driven by ``config/shapes/pipeline.yaml`` (``training.shapes.config``); ``--set key=value``
overrides it (dotted keys).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from synseg_model import SynSeg
from training.config import TrainingConfig
from training.shapes import clip_stage, report
from training.shapes.config import PipelineConfig, load_pipeline_config, load_stage1_config, resolve
from training.shapes.data_stage import DataFolders, make_data
from training.shapes.install import Provenance, install_default
from training.shapes.results import choose_default, evaluate_run, first_run, summarise
from training.shapes.score import score_split
from training.shapes.training_runs import TrainingRuns, untrained
from training.shapes.variants import Run, Variants
from training.shapes.world import load_world

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = resolve("config/shapes/pipeline.yaml")
RESULTS_JSON = "results.json"
RESULTS_DOC = resolve("docs/shapes_results.md")   # with --install-default over every row
EXAMPLES_DOC = resolve("docs/shapes_examples.png")


class Pipeline:
    """One shapes-world run under ``out``: the stages in order, each one's outputs files under ``out``.

    Every config (stage 1, stage 2 and every stage-3 variant) is built and checked when the pipeline is.
    """

    def __init__(self, cfg: PipelineConfig, out: Path, reuse: bool = False) -> None:
        self.cfg, self.out, self.reuse = cfg, out, reuse
        self.world = load_world(cfg.data.world)
        self.folders = DataFolders(out / "data")
        self.stage1_cfg = load_stage1_config(resolve(cfg.stage1.config), cfg.stage1.overrides)
        self.training = TrainingRuns(cfg, out, self.folders, reuse)
        self.variants = Variants(cfg, self.training, lambda model: self.score(model, self.folders.dev))
        stage2 = self.training.check({name: self.variants.overrides(name) for name, spec in cfg.variants.items()
                                      if not spec.choose})
        self.seen_classes: list[str] = stage2.data.classes or self.world.class_names  # what stage 2 trained on
        self.timings: dict[str, float] = {}

    def score(self, model: SynSeg, root: Path) -> dict[str, Any]:
        """``training.shapes.score.score_split`` on a split, seen / unseen by stage 2's classes."""
        return score_split(model, root, self.seen_classes)

    def make_data(self) -> None:
        """The data stage (``data_stage.make_data``); new training data means nothing later is reused."""
        kept = make_data(self.folders, self.cfg.data, self.world, self.reuse)
        self.reuse = self.training.reuse = kept

    def stage1(self) -> tuple[Path, dict[str, Any]]:
        """The CLIP and its gate (``clip_stage.stage1``)."""
        return clip_stage.stage1(self.stage1_cfg, self.folders, self.out / "stage1", self.world.class_names,
                                 self.cfg.stage1_from, self.cfg.require_gate, self.reuse)

    def stage2(self, clip_checkpoint: Path) -> tuple[Path, TrainingConfig]:
        """The dense decoder on the stage-1 CLIP (``TrainingRuns.stage2``): its exported model and config."""
        arch = clip_stage.register_model_config(self.stage1_cfg.model_config)[1]
        return self.training.stage2(clip_checkpoint, arch)

    def run(self, install: bool = False, publish: bool = False) -> dict[str, Any]:
        """All stages; returns (and writes to ``results.json`` and ``results.md``) every row's figures. With
        ``install`` the shipped run becomes the default model; with ``publish`` the table and the figure also
        go to docs/ (``RESULTS_DOC``, ``EXAMPLES_DOC``)."""
        start = time.perf_counter()
        torch.set_num_threads(self.cfg.threads)
        self.make_data()
        self.timings["data"] = time.perf_counter() - start
        tick = time.perf_counter()
        clip_checkpoint, gate_figures = self.stage1()
        self.timings["stage1"] = time.perf_counter() - tick
        stage2_model, stage2_cfg = self.stage2(clip_checkpoint)
        first = self.cfg.seeds[0]
        self.variants.runs = {"untrained": {first: Run(untrained(stage2_model, self.cfg.untrained_seed,
                                                                  self.out / "untrained"))},
                              "stage2": {first: Run(stage2_model)}}
        self.variants.run_all()
        tick = time.perf_counter()
        rows = {name: summarise({seed: evaluate_run(run, self.folders.test, self.folders.dev, self.seen_classes)
                                 for seed, run in runs.items()})
                for name, runs in self.variants.runs.items()}
        self.timings["evaluation"] = time.perf_counter() - tick
        shipped = choose_default(rows, self.cfg.ship)
        results = {
            "rows": rows, "row_labels": self.row_labels(), "gate": gate_figures, "shipped": shipped,
            "ship_metric": self.cfg.ship.metric, "chosen": self.variants.chosen, "seeds": self.cfg.seeds,
            "seen_classes": self.seen_classes, "classes": self.world.class_names, "config": self.cfg.to_dict(),
            "timings_s": {**self.timings, **self.training.timings},
            "machine": {"cpu_threads": self.cfg.threads, "platform": platform.platform()},
        }
        figure_rows = [(self.row_labels()[n], Path(first_run(rows[n])["checkpoint"]))
                       for n in self.cfg.figure.rows if n in rows]
        report.write_figure(self.folders.test, self.world.class_names, figure_rows, self.out / "examples.png",
                            self.cfg.figure.images, self.cfg.figure.activation_maps)
        results["timings_s"]["total"] = time.perf_counter() - start
        (self.out / RESULTS_JSON).write_text(json.dumps(results, indent=1, default=str))
        (self.out / "results.md").write_text(report.results_markdown(results))
        if install:
            self.install(rows, shipped, gate_figures, stage2_cfg.to_dict())
        if publish:
            RESULTS_DOC.write_text(report.RESULTS_DOC_HEADER + report.results_markdown(results))
            shutil.copyfile(self.out / "examples.png", EXAMPLES_DOC)
        logger.info("shapes world done in %.0f s; results in %s", results["timings_s"]["total"],
                    self.out / "results.md")
        return results

    def row_labels(self) -> dict[str, str]:
        """Each row's label in the results table (a chosen row names its candidate)."""
        labels = {"untrained": "(a) untrained decoder", "stage2": "(b) stage 2 alone (dense BCE)"}
        labels.update({name: spec.row for name, spec in self.cfg.variants.items()})
        for name, candidate in self.variants.chosen.items():
            labels[name] += f" = {candidate}"
        return labels

    def install(self, rows: dict[str, dict[str, Any]], shipped: tuple[str, int], gate_figures: dict[str, Any],
                stage2: dict[str, Any]) -> Path:
        """The shipped run as the package's default model (``install.install_default``)."""
        name, seed = shipped
        overrides = [*self.variants.overrides(name), f"train.seed={seed}"] if name in self.cfg.variants else None
        made = Provenance(pipeline=self.cfg, row=name, label=self.row_labels()[name], seed=seed,
                          classes=self.world.class_names, seen=self.seen_classes, world=self.world.spec,
                          stage1=self.stage1_cfg.to_dict(), stage2=stage2, stage3_overrides=overrides,
                          gate=gate_figures)
        return install_default(rows[name]["runs"][seed], rows[name], made)


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m training.shapes run``."""
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
    parser.add_argument("--rows", default=None, metavar="A,B",
                        help="run only these rows of the table and the rows they start from (make shapes: the "
                             "default model's path); default: every row")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the pipeline the command line describes; returns its results."""
    args = get_args_parser().parse_args(argv)
    cfg = load_pipeline_config(args.config, args.overrides)
    if args.rows:
        cfg = cfg.only_rows([row.strip() for row in args.rows.split(",")])
    # The docs hold the whole table: a run of some rows installs its model but leaves them as they are.
    return Pipeline(cfg, args.out, reuse=args.reuse).run(install=args.install_default,
                                                         publish=args.install_default and not args.rows)
