"""The ``neuroradfm`` command line (also ``python -m neuroradfm``).

Exit status: 0 done, 1 some cases of a batch failed, 2 bad input or settings, 3 an internal error (a bug: the
message says where the log is), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from neuroradfm import CAM_LAYERS, SEQUENCES, __version__
from neuroradfm.errors import NeuroRADFMError, SettingsError, describe_failure
from neuroradfm.progress import make_progress

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _path(text: str) -> Path:
    """A path argument; an empty one (``--out ""``) would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def _shown(text: str) -> str:
    """A case id as printed: control characters (a newline, a terminal escape) shown escaped."""
    return text if text.isprintable() else repr(text)


def _site_list(text: str) -> tuple[str, ...]:
    """``--scanner-artifact``: comma-separated site names, ``all``, or ``none`` (the empty tuple)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("give site names (e.g. site-B), all, or none")
    return () if names == ("none",) else names


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("tqdm", "json", "none"), default="tqdm",
                        help="progress display: a bar, JSON lines (for the Slicer module) or nothing")


BUNDLE_CAM_LAYER_HELP = ("encoder stage the bundle's Grad-CAM maps are taken at (default layer2, whose cells are "
                         "4x smaller per side than the last block's)")


def _cam_layer_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--cam-layer", choices=CAM_LAYERS, help=help)


def _norm_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--norm", choices=("batch", "group"), default="batch",
                        help="encoder normalisation: batch (statistics shared by a batch's sites) or group "
                             "(8 groups, per sample)")


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (first CUDA GPU, else CPU), cpu, or cuda:N")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroradfm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"neuroradfm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="markers, survival risk and Grad-CAM maps for one case or a cohort")
    p.add_argument("cases", nargs="*", type=_path,
                   help="case folder(s) (BraTS 2021/2023 naming or a DICOM study) or one manifest .csv")
    for sequence in SEQUENCES:
        p.add_argument(f"--{sequence}", type=_path, help=f"{sequence} image file (instead of a case folder)")
    p.add_argument("--case-id", help="case id for files given with --t1 ... --flair")
    p.add_argument("--series", action="append", default=[], metavar="SEQUENCE=SERIES",
                   help="DICOM study: force a sequence's series by SeriesInstanceUID (or the short UID the error "
                        "lists) or exact SeriesDescription, e.g. --series t1ce=1.2.840...; repeatable")
    p.add_argument("--model", type=_path, help="model bundle folder (default: the shipped demo bundle)")
    p.add_argument("--out", type=_path, required=True,
                   help="output folder; each case goes to OUT/<its case id made a safe folder name>/")
    p.add_argument("--no-overview", action="store_true", help="skip the overview PNG")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),  # neuroradfm.predict.PRECISIONS
                   default="auto",
                   help="what the encoder runs in: auto (float16 autocast, channels-last on a CUDA GPU; exact float32 "
                        "on the CPU), float32 (exact everywhere), bfloat16 or float16 (autocast on any device)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="with --workers: up to N cases already prepared share one forward pass (worth it on a GPU)")
    p.add_argument("--maps", choices=("all", "labels", "none"), default="all",  # neuroradfm.outputs.MAPS
                   help="maps each case gets: all (heat maps, label maps, contours; default), labels (all but the "
                        "heat maps, a tenth of the bytes) or none (predictions.csv/json and the overview only)")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out a sequence that is empty or constant (a blank series) instead of stopping; the "
                        "bundle must take the subset that remains")
    _cam_layer_option(p, "encoder stage of the Grad-CAM maps (default: the bundle's; at another stage the maps "
                         "are plain Grad-CAM, without the bundle's cohort reference)")
    _device_option(p)
    _progress_option(p)
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="cohorts: processes that load and preprocess the next cases while the model runs and the "
                        "previous case is written (default: the CPUs less one, at most 4; 0: one case after another "
                        "in one process)")
    p.add_argument("--resume", action="store_true",
                   help="cohorts: keep each case whose folder in --out already holds a complete result of this "
                        "bundle and these settings (its rows still go into the tables); without it every case is "
                        "computed again and replaces its earlier result")

    p = commands.add_parser("phantom", help="generate the synthetic multi-site phantom cohort")
    p.add_argument("--n", type=int, required=True, help="number of cases")
    p.add_argument("--sites", type=int, default=4, help="number of acquisition sites")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=_path, required=True)
    p.add_argument("--native", action="store_true",
                   help="native acquisitions (head with skull, oblique, anisotropic) instead of BraTS-style")
    p.add_argument("--native-fraction", type=float, default=0.0,
                   help="mix: this fraction (0..1) of the cases native, the others BraTS-style")
    p.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm of BraTS-style cases")
    p.add_argument("--site-contrast", type=float, default=0.0,
                   help="sites also differ in tissue contrast: each tissue's intensity per sequence and site x "
                        "exp(S u), u ~ N(0, 1) fixed per site (0: off; 0.3: strong)")
    p.add_argument("--anatomy", choices=["varied", "fixed"], default="varied",
                   help="varied: every case its own brain (head size and shape, deformation, ageing, mass effect); "
                        "fixed: the one MNI152 brain of generator 1, byte for byte")
    p.add_argument("--deformation-mm", type=float,
                   help="amplitude of the random B-spline deformation, 0..5 mm (default 2.5)")
    p.add_argument("--scale-spread", type=float,
                   help="head size per axis drawn in 1 +- this, 0..0.15 (default 0.1)")
    p.add_argument("--age", type=float, help="every patient this age (0..110 years) instead of the drawn ages")
    p.add_argument("--multifocal", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of the cases with 1-2 satellite lesions (default 0)")
    p.add_argument("--low-grade", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of the IDH-mutant cases with a non-enhancing, non-necrotic low-grade look "
                        "(default 0)")
    p.add_argument("--resection-cavity", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of the cases after resection: a fluid cavity, label 4 (default 0)")
    p.add_argument("--scanner-artifact", type=_site_list, default=(), metavar="SITES",
                   help="every case of these sites (comma-separated names such as site-B, or all; default none) "
                        "gets a receive-coil hot spot at a fixed place over the occipital lobe, in all four "
                        "sequences (the shortcut-learning lesson)")
    _progress_option(p)

    p = commands.add_parser("train-baseline",
                            help="supervised encoder training (new, or --init a pretrained one) + probes + Cox "
                                 "into a bundle")
    p.add_argument("--manifest", type=_path, required=True)
    p.add_argument("--out", type=_path, required=True, help="bundle folder to write")
    p.add_argument("--init", type=_path,
                   help="fine-tune the encoder of this bundle (from neuroradfm pretrain) instead of a new one; its "
                        "architecture and model grid replace --arch, --widen, --norm, --size and --spacing")
    p.add_argument("--arch", default="resnet10")
    p.add_argument("--widen", type=float, default=0.5, help="channel width factor of the ResNet")
    _norm_option(p)
    p.add_argument("--size", type=int, default=96, help="model grid voxels per side")
    p.add_argument("--spacing", type=float, default=2.0, help="model grid spacing in mm")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction in preprocessing")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int,
                   help="seed of the split into the encoder's cases and the heads' held-out cases (default: "
                        "--seed); fix it to compare training seeds on the same held-out cases")
    p.add_argument("--tumour-weight", type=float, default=0.0,
                   help="weight of the auxiliary tumour-occupancy target (needs seg in the manifest; 0 = off)")
    p.add_argument("--lesion-pooling", action="store_true",
                   help="marker loss on features averaged over the tumour (needs seg) instead of the whole grid")
    p.add_argument("--background-weight", type=float, default=0.0,
                   help="weight of the loss that keeps tumour-free features the same across cases (needs seg)")
    p.add_argument("--dro", choices=("exponentiated", "worst-group"),
                   help="train the encoder with Group-DRO over the groups of --group-column (default: off, ERM); "
                        "exponentiated: Sagawa et al.'s q update; worst-group: the reference code's hard mode")
    p.add_argument("--group-column", default="site",
                   help="manifest column(s) of the Group-DRO groups; several, comma-separated, make their "
                        "combinations the groups (spurious attribute x label, e.g. scanner_artifact,idh1)")
    p.add_argument("--eta-q", type=float, default=0.01, help="step size of Group-DRO's q update")
    p.add_argument("--markers", default="",
                   help="train the encoder on these markers only (comma-separated keys, e.g. idh1; default all); "
                        "the heads are still fitted for every marker")
    p.add_argument("--cache", type=_path,
                   help="folder that keeps preprocessed cases between runs (reused while files and settings match)")
    p.add_argument("--metrics", type=_path, help="append one JSON line per training step to this file")
    _cam_layer_option(p, BUNDLE_CAM_LAYER_HELP)
    _add_degrade_arguments(p)
    p.add_argument("--name", default="neuroradfm-baseline")
    p.add_argument("--demo", action="store_true", help="label the bundle as the synthetic-data demonstration")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("pretrain", help="self-supervised pretraining (BYOL/DINO/MAE/MoCo) with optional "
                                             "Group-DRO into an encoder bundle; runs unchanged under torchrun")
    p.add_argument("--manifest", type=_path, required=True)
    p.add_argument("--method", choices=("byol", "dino", "mae", "moco"), required=True)
    p.add_argument("--out", type=_path, required=True, help="encoder bundle folder to write")
    p.add_argument("--dro", action="store_true", help="Group-DRO over the groups of --group-column (else ERM)")
    p.add_argument("--dro-mode", choices=("exponentiated", "worst-group"), default="exponentiated",
                   help="exponentiated: Sagawa et al.'s q update; worst-group: the reference code's hard mode")
    p.add_argument("--group-column", default="site", help="manifest column that defines the groups")
    p.add_argument("--groups", help="comma-separated group names (a label outside them is an error)")
    p.add_argument("--eta-q", type=float, default=0.01, help="step size of the q update")
    p.add_argument("--dro-adjustment", type=float, default=0.0,
                   help="generalisation adjustment C (adds C/sqrt(n_g) to group g's loss)")
    p.add_argument("--group-balanced", action="store_true", help="sample every group equally often")
    p.add_argument("--dro-sampling", action="store_true",
                   help="Group-DRO draws each step's cases in proportion to q instead of weighting them")
    p.add_argument("--arch", default="resnet50", help="resnet10, resnet18, resnet34, resnet50 or resnet101")
    p.add_argument("--widen", type=float, default=1.0, help="channel width factor of the ResNet")
    _norm_option(p)
    p.add_argument("--conv1-stride", type=int, default=2)
    p.add_argument("--no-max-pool", action="store_true")
    p.add_argument("--size", type=int, default=128, help="model grid voxels per side")
    p.add_argument("--spacing", type=float, default=2.0, help="model grid spacing in mm")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction in preprocessing")
    p.add_argument("--crop", type=int, default=96, help="side of the random crops the views are made of")
    p.add_argument("--augment-strength", type=float, default=1.0,
                   help="scale of the views' affine and intensity augmentation (0: crops and flips only)")
    p.add_argument("--flips", choices=("all", "lr", "none"), default="all",
                   help="axes the views are flipped along: all three, left-right only, or none")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=0, help="stop (and end the schedule) after this many steps")
    p.add_argument("--batch-size", type=int, default=8, help="global batch per optimizer step")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per step on each process")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of the steps of linear warm-up")
    p.add_argument("--hidden-dim", type=int, default=1024, help="hidden width of the projection MLPs")
    p.add_argument("--proj-dim", type=int, default=256)
    p.add_argument("--dino-out-dim", type=int, default=4096)
    p.add_argument("--dino-centering", choices=("ema", "sinkhorn"), default="ema",
                   help="DINO teacher centring: an EMA of its mean output (DINO) or Sinkhorn-Knopp (DINOv2)")
    p.add_argument("--dino-koleo", type=float, default=0.0,
                   help="DINO: weight of DINOv2's KoLeo term, which spreads a batch's embeddings apart (0: off)")
    p.add_argument("--dino-head-norm", choices=("batch", "layer"), default="batch",
                   help="DINO: normalisation of the head's hidden layer; batch (DINO's use_bn_in_head) keeps the "
                        "cases' targets apart where layer lets the teacher go uniform (docs/PRETRAINING.md)")
    p.add_argument("--mask-ratio", type=float, default=0.6, help="MAE: fraction of masked cubes")
    p.add_argument("--mask-patch", type=int, default=0,
                   help="MAE: side of the masked cubes in voxels (0: the encoder's total stride)")
    p.add_argument("--mask-per-sequence", action="store_true",
                   help="MAE: mask each sequence's cubes independently (also learn to predict one sequence "
                        "from the others)")
    p.add_argument("--ema", type=float, default=0.996, help="initial EMA momentum of teachers")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--checkpoint", type=_path, help="checkpoint file (default OUT.checkpoint.pt)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue exactly from the checkpoint")
    p.add_argument("--cache", type=_path, help="preprocessed-case cache folder (default OUT.cache)")
    p.add_argument("--metrics", type=_path, help="one JSON line per step (loss, group losses, q, lr)")
    p.add_argument("--workers", type=int, default=2, help="data loader worker processes")
    p.add_argument("--seed", type=int, default=0)
    _add_degrade_arguments(p)
    p.add_argument("--name", default="neuroradfm-pretrained-encoder")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("fit-heads", help="probes, Cox and OOD on a frozen (pretrained) encoder's embeddings")
    p.add_argument("--model", type=_path, required=True, help="bundle whose encoder is used (heads are replaced)")
    p.add_argument("--manifest", type=_path, required=True)
    p.add_argument("--out", type=_path, required=True, help="complete bundle folder to write")
    p.add_argument("--cache", type=_path, help="preprocessed-case cache folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="bundle name (default: the encoder bundle's name)")
    _cam_layer_option(p, BUNDLE_CAM_LAYER_HELP)
    p.add_argument("--demo", action="store_true", help="label the bundle as the synthetic-data demonstration")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("evaluate", help="how good are one or more bundles on a cohort: marker probes, survival, "
                                             "site invariance, data efficiency and Grad-CAM localisation, per site, "
                                             "compared side by side, in one HTML report")
    p.add_argument("--manifest", type=_path, required=True, help="cohort manifest CSV (with its clinical columns)")
    p.add_argument("--model", type=_path, nargs="+", default=[], metavar="BUNDLE",
                   help="bundle folder(s) to evaluate on the same cases and splits (encoder-only bundles too)")
    p.add_argument("--out", type=_path, required=True,
                   help="output folder: OUT/report/ (report.html, metrics.json, CSV tables) and OUT/cache/")
    p.add_argument("--labels", help="comma-separated names of the bundles in the report (default: their names)")
    p.add_argument("--clinical", type=_path, help="clinical table CSV joined on case_id (its columns take precedence)")
    p.add_argument("--split", choices=("kfold", "site", "column"), default="kfold",
                   help="kfold: stratified by site, grouped by subject_id; site: leave one site out; column: the "
                        "manifest's --split-column (train/test or fold names)")
    p.add_argument("--folds", type=int, default=5, help="folds of --split kfold")
    p.add_argument("--split-column", help="manifest column of --split column")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the probes, the bootstrap and t-SNE")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of each confidence interval")
    p.add_argument("--subgroup", help="survival subgroup: a pandas query over the clinical columns (e.g. \"age >= 40 "
                                      "and idh1 == 0\"), or all (default: IDH-wildtype glioblastoma when the columns "
                                      "say it)")
    p.add_argument("--cutoff", action="append", default=[], metavar="COLUMN=VALUE",
                   help="cut-off of a continuous column's binarised marker (ki67_index=20, tp53_expression=10)")
    p.add_argument("--colour-marker", default="idh1", help="marker that colours the PCA / t-SNE plots")
    p.add_argument("--reference-columns", action="append", default=[], metavar="COLUMNS",
                   help="comma-separated manifest columns or glob patterns evaluated as one more feature set (a "
                        "clinical baseline; site: the site alone, the shortcut; on the phantom trait_*: the ceiling); "
                        "repeatable, one feature set each")
    p.add_argument("--efficiency-seeds", type=int, default=5,
                   help="repeats of each data-efficiency setting (0: skip the data-efficiency section)")
    p.add_argument("--cache", type=_path, help="preprocessed cases and embeddings (default OUT/cache)")
    p.add_argument("--batch-size", type=int, default=4, help="cases per forward pass when embedding")
    p.add_argument("--subsets", choices=("auto", "none", "all"), default="auto",
                   help="marker AUCs with fewer sequences (all four, each one missing, T1ce + FLAIR, T1ce): auto, "
                        "those each bundle was trained for; all, every one (how a bundle trained on all four "
                        "degrades); none")
    p.add_argument("--robustness", action="store_true",
                   help="add each bundle's robustness to image artifacts (its heads on corrupted cases)")
    p.add_argument("--robustness-families", metavar="NAMES",
                   help="comma-separated artifact families of --robustness (default: all)")
    p.add_argument("--robustness-levels", metavar="LEVELS",
                   help="comma-separated artifact levels of --robustness, 1-4 (default: all; 0, clean, always)")
    p.add_argument("--robustness-cases", type=int, default=0,
                   help="cases --robustness runs on, drawn with --seed (default 0: every case)")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("demo", help="a phantom case in, predictions and Grad-CAM maps out")
    p.add_argument("--out", type=_path, default=Path("neuroradfm-demo"))
    p.add_argument("--drop", action="append", default=[], metavar="SEQUENCE",
                   help="leave a sequence out of the demo case (t1, t1ce, t2 or flair; repeat or separate with "
                        "commas): what the model does with a study that lacks it")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("teach", help="a teaching pack: graded phantom cases with known answers, student sheets, "
                                          "offline viewers and an answer key (or --check an existing pack)")
    p.add_argument("--out", type=_path, help="new or empty folder to write the pack into")
    p.add_argument("--cases", type=int, default=8, help="how many cases (1-48; default 8: every site and grade twice)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed: another seed, other patients")
    p.add_argument("--model", type=_path, help="the bundle that answers (default: the demo bundle)")
    p.add_argument("--spacing", type=float, default=1.5, help="the phantoms' voxel size in mm (default 1.5)")
    p.add_argument("--check", type=_path, metavar="PACK", help="check a pack folder (complete, this version) and "
                                                               "list its cases; writes nothing")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("cohort", help="a downloaded public cohort -> a checked manifest")
    cohort = p.add_subparsers(dest="cohort_command", required=True)
    q = cohort.add_parser("import", help="find a layout's cases under ROOT and write a manifest (+ .import.json)")
    q.add_argument("root", type=_path, help="the cohort's folder as downloaded")
    q.add_argument("--layout", required=True,
                   help="brats2021, brats2023, upenn-gbm, ucsf-pdgm, mu-glioma-post, lumiere, rsna-miccai-mgmt or "
                        "folder (ROOT/<case>/ in any naming the case loader reads)")
    q.add_argument("--clinical", type=_path,
                   help="the layout's clinical table: brats2021 BraTS2021_MappingToTCIA.xlsx, upenn-gbm "
                        "UPENN-GBM_clinical_info_v2.1.csv, ucsf-pdgm UCSF-PDGM-metadata_v5.csv, mu-glioma-post "
                        "MU-Glioma-Post_ClinicalData-July2025.xlsx, lumiere LUMIERE-Demographics_Pathology.csv, "
                        "rsna-miccai-mgmt train_labels.csv, folder: yours (.csv or .xlsx)")
    q.add_argument("--map", type=_path, dest="map_file",
                   help="JSON file naming which columns and values of --clinical are ours (folder layout), or "
                        "overriding a public layout's mapping; see the README")
    q.add_argument("--out", type=_path, required=True, help="manifest .csv to write")
    q = cohort.add_parser("check", help="files, geometry, labels, subjects and survival of a manifest; exit 0 "
                                        "clean, 1 warnings, 2 errors")
    q.add_argument("manifest", type=_path)
    q.add_argument("--strict", action="store_true", help="warnings are errors (exit 2)")
    q.add_argument("--headers-only", action="store_true",
                   help="read image headers only: skip comparing T1ce voxels to find one scan under two names")
    _progress_option(q)
    q = cohort.add_parser("merge", help="several imported manifests -> one multi-site manifest, duplicates removed")
    q.add_argument("manifests", nargs="+", type=_path)
    q.add_argument("--out", type=_path, required=True, help="merged manifest .csv to write")
    q.add_argument("--headers-only", action="store_true",
                   help="find duplicates by subject and BraTS ids only, without comparing T1ce voxels")
    _progress_option(q)

    p = commands.add_parser("lesson", help="the shortcut-learning lesson: an ERM and a Group-DRO model on the same "
                                           "held-out phantoms (accuracy per site, Grad-CAM, counterfactual, notes)")
    p.add_argument("--out", type=_path, required=True, help="new or empty folder to write the lesson into")
    p.add_argument("--rebuild", action="store_true",
                   help="train the pair afresh (phantoms + train-baseline, ERM and Group-DRO; minutes on a CPU) "
                        "instead of using the shipped pair")
    p.add_argument("--models", type=_path,
                   help="use the pair in this folder (erm/ and group-dro/, e.g. an earlier --rebuild's models/)")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("info", help="print a model bundle's card summary")
    p.add_argument("bundle", type=_path)

    from neuroradfm.wheelhouse import PLATFORMS, host_platform, python_releases

    p = commands.add_parser(
        "wheelhouse", help="on a computer with internet: download the wheels the Slicer extension installs, for a "
                           "Slicer without internet (the module installs from the folder offline)",
        description="Runs `pip download --only-binary=:all: --platform <tag> --python-version 3.12 --implementation "
                    "cp` for every package the NeuroRADFM module installs, and writes OUT/requirements.txt (the exact "
                    "versions) and OUT/neuroradfm-wheelhouse.json (platform, Slicer, files with sha256). numpy and "
                    "SimpleITK are left out: they come with Slicer and are never installed over it.")
    p.add_argument("--out", type=_path, required=True,
                   help="folder to write: new, empty, or one this command wrote before (it is replaced)")
    p.add_argument("--platform", choices=sorted(PLATFORMS), default=host_platform(),
                   help="the Slicer computer's platform (default: this computer's; macos is Apple silicon)")
    p.add_argument("--slicer", choices=python_releases(), default=python_releases()[0],
                   help="the Slicer release (its Python and numpy; default: the oldest, whose numpy later ones accept)")
    p.add_argument("--with-torch", action="store_true",
                   help="also download PyTorch's CPU build (download.pytorch.org/whl/cpu). Without it the folder has "
                        "no PyTorch: the PyTorch extension installs PyTorch (it picks the CUDA build for the GPU), "
                        "which needs the internet once")
    p.add_argument("--requirements", type=_path,
                   help="the requirement list (default: the module's Resources/requirements.txt)")
    return parser


def _series_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        sequence, _, series = item.partition("=")
        sequence = sequence.strip().lower()
        if sequence not in SEQUENCES or not series.strip():
            raise NeuroRADFMError(f"--series {item!r}: expected SEQUENCE=SERIES with SEQUENCE one of "
                                  f"{', '.join(SEQUENCES)}")
        if sequence in overrides:
            raise NeuroRADFMError(f"--series gives {sequence} twice ({overrides[sequence]!r} and {series.strip()!r})")
        overrides[sequence] = series.strip()
    return overrides


def _workers(text: str) -> int:
    """``--workers``: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (0 or more)")
    return value


def _case_loaders(args: argparse.Namespace) -> list:
    """(case_id, loader) pairs; the case id (which names the result folder) is known before any case is read. The
    loaders pickle (partials of load_case, manifest entries' load), so that cohort workers can run them."""
    from functools import partial

    from neuroradfm.io import load_case, read_manifest
    from neuroradfm.io.loader import explicit_case_id

    explicit = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s) is not None}
    series = _series_overrides(args.series)
    if explicit:
        if args.cases:
            raise NeuroRADFMError("give either case folders / a manifest or --t1 ... --flair files, not both")
        case_id = args.case_id if args.case_id is not None else explicit_case_id(explicit)
        return [(case_id, partial(load_case, explicit, case_id=case_id, sequences=series))]
    if args.case_id is not None:
        raise NeuroRADFMError("--case-id names a case given with --t1 ... --flair; a folder's case id is its name "
                              "and a manifest's is its case_id column")
    if not args.cases:
        raise NeuroRADFMError("nothing to predict: give a case folder, a manifest .csv or --t1 ... --flair")
    if len(args.cases) > 1 and any(path.suffix.lower() == ".csv" for path in args.cases):
        raise NeuroRADFMError("give one manifest .csv alone, or case folders: not a manifest with other manifests or "
                              "folders")
    if len(args.cases) == 1 and args.cases[0].suffix.lower() == ".csv":
        if series:
            raise NeuroRADFMError("--series applies to DICOM study folders, not to a manifest")
        return [(entry.case_id, entry.load) for entry in read_manifest(args.cases[0])]
    if any(not Path(os.path.abspath(path)).name for path in args.cases):
        raise NeuroRADFMError("the file system's root is not a case folder: give the case folders themselves")
    return [(Path(os.path.abspath(path)).name, partial(load_case, path, case_id=Path(os.path.abspath(path)).name,
                                                       sequences=series)) for path in args.cases]


def _predict(args: argparse.Namespace) -> int:
    from neuroradfm.batch import predict_cases
    from neuroradfm.cohort_pipeline import default_workers
    from neuroradfm.demo import demo_bundle_path
    from neuroradfm.models.bundle import load_bundle
    from neuroradfm.sharding import launched_by_torchrun, processes_per_node

    bundle = load_bundle(args.model or demo_bundle_path())
    bundle.require_heads()
    loaders = _case_loaders(args)
    shard = None
    if launched_by_torchrun():  # one rank of several: its share of the cases (neuroradfm.sharding)
        from neuroradfm.sharding import start_shard

        shard = start_shard(args.device)
    workers = args.workers if args.workers is not None else default_workers(processes_per_node())
    try:
        result = predict_cases(loaders, bundle, args.out, device=args.device if shard is None else shard.device,
                               progress=make_progress(args.progress if shard is None or shard.is_main else "none"),
                               overview=not args.no_overview, cam_layer=args.cam_layer,
                               command=["neuroradfm", *sys.argv[1:]], allow_missing=args.allow_missing,
                               maps=args.maps, workers=workers, resume=args.resume, shard=shard,
                               precision=args.precision, batch_size=args.batch_size)
    finally:
        if shard is not None:
            from neuroradfm.sharding import stop_shard

            stop_shard(shard)
    if shard is not None and not shard.is_main:  # rank 0 speaks for the run; every rank exits alike
        return EXIT_SOME_FAILED if result.failures else EXIT_OK
    for case_id, folder in result.outputs.items():
        print(f"{_shown(case_id)}: {folder}")
    if len(loaders) == 1 and result.failures:  # one case: its failure is the command's
        kind = next(iter(result.failure_kinds.values()))
        print(f"error: {next(iter(result.failures.values()))}", file=sys.stderr)
        return EXIT_INTERNAL if kind == "internal" else EXIT_BAD_INPUT
    for case_id, error in result.failures.items():
        print(f"FAILED {_shown(case_id)}: {error}", file=sys.stderr)
    if result.failures:
        print(f"{len(result.failures)} of {len(loaders)} cases failed: {Path(args.out) / 'failures.csv'}",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _phantom(args: argparse.Namespace) -> int:
    from neuroradfm.phantom import PhantomOptions, generate_cohort

    options = PhantomOptions(anatomy=args.anatomy, deformation_mm=args.deformation_mm, scale_spread=args.scale_spread,
                             age=args.age, multifocal=args.multifocal, low_grade=args.low_grade,
                             resection_cavity=args.resection_cavity, scanner_artifact=args.scanner_artifact)
    manifest = generate_cohort(args.out, n=args.n, sites=args.sites, seed=args.seed, native=args.native,
                               native_fraction=args.native_fraction, spacing=args.spacing,
                               site_contrast=args.site_contrast, progress=make_progress(args.progress), options=options)
    print(f"manifest: {manifest}")
    return 0


def _add_degrade_arguments(p: argparse.ArgumentParser) -> None:
    """What real studies bring, drawn at random during training (neuroradfm.ssl.augment.degrade)."""
    p.add_argument("--sequence-dropout", type=float, default=0.0, metavar="P",
                   help="zero each sequence of a training sample with probability P (never all): the bundle then "
                        "takes any non-empty subset of T1/T1ce/T2/FLAIR, and cases lacking sequences may train it")
    p.add_argument("--artifact-augment", type=float, nargs="?", const=0.5, default=0.0, metavar="P",
                   help="give a training sample a random artifact (bias, noise, Gibbs, spike, gamma, thick slices; "
                        "level 1-4) with probability P (0.5 when given without a value)")


def _rebuild_command() -> str:
    """The command line as typed, quoted so that it runs again as it is (the card's ``rebuild_command``)."""
    return shlex.join(["neuroradfm", *sys.argv[1:]])


def _train_baseline(args: argparse.Namespace) -> int:
    from neuroradfm.models.encoder import EncoderConfig
    from neuroradfm.preprocess import PreprocessSettings
    from neuroradfm.train.baseline import BaselineSettings, train_baseline

    settings = BaselineSettings(
        encoder=EncoderConfig(args.arch, widen_factor=args.widen, conv1_stride=2, no_max_pool=True, norm=args.norm),
        preprocessing=PreprocessSettings(spacing_mm=args.spacing, size=(args.size,) * 3, n4=not args.no_n4),
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        dro=args.dro or "erm", group_column=args.group_column, eta_q=args.eta_q,
        markers=tuple(key.strip() for key in args.markers.split(",") if key.strip()),
        split_seed=args.split_seed,
        tumour_weight=args.tumour_weight, lesion_pooling=args.lesion_pooling,
        background_weight=args.background_weight, device=args.device,
        sequence_dropout=args.sequence_dropout, artifact_augment=args.artifact_augment,
        **({"cam_layer": args.cam_layer} if args.cam_layer else {}))
    card = {"name": args.name, "rebuild_command": _rebuild_command()}
    if args.demo:
        card.update({
            "description": "Demonstration model trained by neuroradfm on its synthetic phantom cohort.",
            "intended_use": "SYNTHETIC-DATA DEMONSTRATION ONLY - NOT FOR CLINICAL USE. Trained on simulated "
                            "phantoms; its outputs say nothing about real patients.",
        })
    path = train_baseline(args.manifest, args.out, settings, card=card, progress=make_progress(args.progress),
                          cache_dir=args.cache, metrics_path=args.metrics, init=args.init)
    print(f"bundle: {path}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from neuroradfm.models.encoder import EncoderConfig
    from neuroradfm.preprocess import PreprocessSettings
    from neuroradfm.ssl import MethodSettings
    from neuroradfm.train.pretrain import PretrainSettings, pretrain

    try:
        settings = PretrainSettings(
            method=args.method,
            encoder=EncoderConfig(args.arch, widen_factor=args.widen, conv1_stride=args.conv1_stride,
                                  no_max_pool=args.no_max_pool, norm=args.norm),
            preprocessing=PreprocessSettings(spacing_mm=args.spacing, size=(args.size,) * 3, n4=not args.no_n4),
            crop_size=args.crop, augment_strength=args.augment_strength, flips=args.flips,
            method_settings=MethodSettings(hidden_dim=args.hidden_dim, proj_dim=args.proj_dim, ema_momentum=args.ema,
                                           dino_out_dim=args.dino_out_dim, dino_centering=args.dino_centering,
                                           dino_koleo=args.dino_koleo, dino_head_norm=args.dino_head_norm,
                                           mae_mask_ratio=args.mask_ratio,
                                           mae_patch=args.mask_patch, mae_mask_per_sequence=args.mask_per_sequence),
            epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, accumulate=args.accumulate,
            learning_rate=args.lr, weight_decay=args.weight_decay, warmup_fraction=args.warmup,
            dro=args.dro_mode if args.dro else "erm", group_column=args.group_column,
            groups=None if not args.groups else tuple(g.strip() for g in args.groups.split(",") if g.strip()),
            eta_q=args.eta_q, dro_adjustment=args.dro_adjustment, group_balanced=args.group_balanced,
            dro_sampling=args.dro_sampling,
            sequence_dropout=args.sequence_dropout, artifact_augment=args.artifact_augment,
            amp=not args.no_amp, channels_last=not args.no_channels_last, checkpoint_every=args.checkpoint_every,
            num_workers=args.workers, seed=args.seed, device=args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    card = {"name": args.name, "rebuild_command": _rebuild_command()}
    path = pretrain(args.manifest, args.out, settings, card=card, progress=make_progress(args.progress),
                    cache_dir=args.cache, metrics_path=args.metrics, checkpoint_path=args.checkpoint,
                    resume=args.resume)
    print(f"bundle: {path}")
    return 0


def _fit_heads(args: argparse.Namespace) -> int:
    from neuroradfm.train.fit_heads import fit_heads_bundle

    card = {"rebuild_command": _rebuild_command()}
    if args.name:
        card["name"] = args.name
    if args.demo:
        card.update({
            "description": "Demonstration model trained by neuroradfm on its synthetic phantom cohort.",
            "intended_use": "SYNTHETIC-DATA DEMONSTRATION ONLY - NOT FOR CLINICAL USE. Trained on simulated "
                            "phantoms; its outputs say nothing about real patients.",
        })
    path = fit_heads_bundle(args.model, args.manifest, args.out, card=card, progress=make_progress(args.progress),
                            cache_dir=args.cache, seed=args.seed, device=args.device,
                            **({"cam_layer": args.cam_layer} if args.cam_layer else {}))
    print(f"bundle: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from neuroradfm.evaluate.run import EvaluateSettings, evaluate, parse_cutoffs, parse_list

    settings = EvaluateSettings(
        split=args.split, folds=args.folds, split_column=args.split_column, seed=args.seed, n_boot=args.bootstrap,
        subgroup=args.subgroup, cutoffs=parse_cutoffs(args.cutoff), colour_marker=args.colour_marker,
        reference_columns=[[c.strip() for c in item.split(",") if c.strip()] for item in args.reference_columns],
        efficiency_seeds=args.efficiency_seeds, batch_size=args.batch_size, device=args.device,
        subsets=args.subsets, robustness=args.robustness, robustness_cases=args.robustness_cases,
        **({"robustness_families": parse_list(args.robustness_families, "--robustness-families")}
           if args.robustness_families else {}),
        **({"robustness_levels": parse_list(args.robustness_levels, "--robustness-levels", int)}
           if args.robustness_levels else {}))
    labels = None if args.labels is None else [label.strip() for label in args.labels.split(",")]
    report = evaluate(args.manifest, args.model, args.out, settings, labels=labels, clinical=args.clinical,
                      cache_dir=args.cache, progress=make_progress(args.progress),
                      command=["neuroradfm", *sys.argv[1:]])
    print(f"report: {report}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from neuroradfm.demo import run_demo

    drop = [name for item in args.drop for name in item.split(",") if name.strip()]
    run_demo(args.out, device=args.device, progress=make_progress(args.progress), drop=drop)
    return 0


def _lesson(args: argparse.Namespace) -> int:
    from neuroradfm.teach.lesson import run_lesson

    out = run_lesson(args.out, rebuild=args.rebuild, device=args.device, progress=make_progress(args.progress),
                     models=args.models)
    print(f"lesson: {out / 'notes.html'}")
    return 0


def _teach(args: argparse.Namespace) -> int:
    if args.check is not None:
        from neuroradfm.teach.pack import read_pack

        pack = read_pack(args.check)
        print(f"{args.check}: a complete teaching pack, {len(pack.cases)} cases, model "
              f"{pack.card.get('model', {}).get('name', '?')}")
        for case in pack.cases:
            print(f"  case {case.number}: {case.difficulty}, {case.site} ({case.case_id})")
        return 0
    if args.out is None:
        raise SettingsError("--out", "name the folder to write the pack into (or --check PACK)")
    from neuroradfm.teach.build import build_pack

    out = build_pack(args.out, cases=args.cases, seed=args.seed, model=args.model, spacing_mm=args.spacing,
                     device=args.device, progress=make_progress(args.progress))
    print(f"teaching pack: {out / 'index.html'} (answer key: {out / 'teacher' / 'answers.html'})")
    return 0


def _cohort(args: argparse.Namespace) -> int:
    from neuroradfm.cohort import check_manifest, import_cohort

    if args.cohort_command == "import":
        manifest = import_cohort(args.layout, args.root, args.out, args.clinical, args.map_file)
        print(f"manifest: {manifest}")
        return 0
    if args.cohort_command == "merge":
        from neuroradfm.cohort.merge import merge_manifests

        manifest, dropped = merge_manifests(args.manifests, args.out, hashes=not args.headers_only,
                                            progress=make_progress(args.progress))
        for case, why in dropped.items():
            print(f"dropped {case}: {why}")
        print(f"manifest: {manifest}")
        return 0
    report = check_manifest(args.manifest, hashes=not args.headers_only, progress=make_progress(args.progress))
    print(report.text())
    return report.exit_status(args.strict)


def _wheelhouse(args: argparse.Namespace) -> int:
    from neuroradfm.wheelhouse import build_wheelhouse

    if args.platform is None:
        print("error: --platform: this computer is none of win_amd64, manylinux, macos; name the Slicer computer's",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    manifest = build_wheelhouse(args.out, args.platform, args.slicer, args.with_torch, args.requirements)
    print(f"wheel folder: {args.out} ({args.platform}, Slicer {args.slicer}; manifest {manifest.name})")
    return 0


def _info(args: argparse.Namespace) -> int:
    """The card, checked as load_bundle checks it short of reading tensor values: no torch, well under a second."""
    from neuroradfm.models.bundle import read_bundle_card

    card = read_bundle_card(args.bundle)
    summary = {k: card.get(k) for k in ("name", "description", "intended_use", "architecture", "preprocessing",
                                         "content_hash", "rebuild_command")}
    heads = card["heads"]
    summary["markers"] = None if heads is None else {m["key"]: m.get("metrics", {}) for m in heads.get("markers", [])}
    summary["survival"] = None if heads is None or not heads.get("cox") else heads["cox"].get("metrics", {})
    print(json.dumps(summary, indent=1))
    return 0


def commands() -> list[str]:
    """The subcommands this core offers (the Slicer Train module enables what exists)."""
    for action in _parser()._subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def _exit_on_sigterm() -> None:
    """SIGTERM (a cancel from the Slicer module) unwinds like Ctrl-C, so half-written outputs are removed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _crash_log(args: argparse.Namespace, error: BaseException) -> Path | None:
    """The traceback of an internal error: in predict's output folder when it exists, else the temp folder."""
    from neuroradfm.output_paths import ERRORS_LOG

    out = getattr(args, "out", None) if args.command == "predict" else None
    if out is not None and Path(out).is_dir():
        log = Path(out) / ERRORS_LOG
    else:
        log = Path(tempfile.gettempdir()) / f"neuroradfm-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} neuroradfm {__version__}: "
                         f"{' '.join(sys.argv)}\n")
            handle.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    except OSError:
        return None
    return log


def _tolerant_output() -> None:
    """Characters the console cannot show (a case id in Chinese on an ASCII terminal) are escaped, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant_output()
    args = _parser().parse_args(argv)
    _exit_on_sigterm()
    handler = {"predict": _predict, "phantom": _phantom, "train-baseline": _train_baseline, "demo": _demo,
               "pretrain": _pretrain, "fit-heads": _fit_heads, "evaluate": _evaluate,
               "cohort": _cohort, "info": _info, "wheelhouse": _wheelhouse, "teach": _teach,
               "lesson": _lesson}[args.command]
    try:
        if getattr(args, "device", None) is not None:  # a device that is not there fails once, before any work
            from neuroradfm.models.encoder import resolve_device

            resolve_device(args.device)
        return handler(args)
    except NeuroRADFMError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): nothing half-written was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:  # a cancel (see _exit_on_sigterm)
            print("terminated (cancelled): nothing half-written was kept", file=sys.stderr)
        raise
    except Exception as error:  # noqa: BLE001 - anything else is a bug: say so, keep the traceback for the report
        kind, message = describe_failure(error)
        if kind != "internal":  # memory, or a file the operating system refused
            print(f"error: {message}", file=sys.stderr)
            return EXIT_BAD_INPUT
        log = _crash_log(args, error)
        print(f"error: {message} (traceback in {log or 'no log: it could not be written'})", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
