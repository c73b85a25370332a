"""The ``neuroradfm`` command line (also ``python -m neuroradfm``).

Exit status: 0 success, 1 some cases of a batch failed, 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from neuroradfm import SEQUENCES, __version__
from neuroradfm.errors import NeuroRADFMError
from neuroradfm.progress import make_progress


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=("tqdm", "json", "none"), default="tqdm",
                        help="progress display: a bar, JSON lines (for the Slicer module) or nothing")


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (first CUDA GPU, else CPU), cpu, or cuda:N")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroradfm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"neuroradfm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="markers, survival risk and Grad-CAM maps for one case or a cohort")
    p.add_argument("cases", nargs="*", type=Path,
                   help="case folder(s) (BraTS 2021/2023 naming or a DICOM study) or one manifest .csv")
    for sequence in SEQUENCES:
        p.add_argument(f"--{sequence}", type=Path, help=f"{sequence} image file (instead of a case folder)")
    p.add_argument("--case-id", help="case id for files given with --t1 ... --flair")
    p.add_argument("--series", action="append", default=[], metavar="SEQUENCE=SERIES",
                   help="DICOM study: force a sequence's series by SeriesInstanceUID (or the short UID the error "
                        "lists) or exact SeriesDescription, e.g. --series t1ce=1.2.840...; repeatable")
    p.add_argument("--model", type=Path, help="model bundle folder (default: the shipped demo bundle)")
    p.add_argument("--out", type=Path, required=True, help="output folder; each case goes to OUT/<case_id>/")
    p.add_argument("--no-overview", action="store_true", help="skip the overview PNG")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("phantom", help="generate the synthetic multi-site phantom cohort")
    p.add_argument("--n", type=int, required=True, help="number of cases")
    p.add_argument("--sites", type=int, default=4, help="number of acquisition sites")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--native", action="store_true",
                   help="native acquisitions (head with skull, oblique, anisotropic) instead of BraTS-style")
    p.add_argument("--native-fraction", type=float, default=0.0,
                   help="mix: this fraction (0..1) of the cases native, the others BraTS-style")
    p.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm of BraTS-style cases")
    _progress_option(p)

    p = commands.add_parser("train-baseline",
                            help="supervised baseline encoder + probes + Cox into a bundle (until SSL lands)")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--arch", default="resnet10")
    p.add_argument("--widen", type=float, default=0.5, help="channel width factor of the ResNet")
    p.add_argument("--size", type=int, default=96, help="model grid voxels per side")
    p.add_argument("--spacing", type=float, default=2.0, help="model grid spacing in mm")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tumour-weight", type=float, default=0.0,
                   help="weight of the auxiliary tumour-occupancy target (needs seg in the manifest; 0 = off)")
    p.add_argument("--cache", type=Path,
                   help="folder that keeps preprocessed cases between runs (reused while files and settings match)")
    p.add_argument("--metrics", type=Path, help="append one JSON line per training step to this file")
    p.add_argument("--name", default="neuroradfm-baseline")
    p.add_argument("--demo", action="store_true", help="label the bundle as the synthetic-data demonstration")
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("demo", help="a phantom case in, predictions and Grad-CAM maps out")
    p.add_argument("--out", type=Path, default=Path("neuroradfm-demo"))
    _device_option(p)
    _progress_option(p)

    p = commands.add_parser("info", help="print a model bundle's card summary")
    p.add_argument("bundle", type=Path)
    return parser


def _series_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        sequence, _, series = item.partition("=")
        sequence = sequence.strip().lower()
        if sequence not in SEQUENCES or not series.strip():
            raise NeuroRADFMError(f"--series {item!r}: expected SEQUENCE=SERIES with SEQUENCE one of "
                                  f"{', '.join(SEQUENCES)}")
        overrides[sequence] = series.strip()
    return overrides


def _case_loaders(args: argparse.Namespace) -> list:
    from neuroradfm.io import load_case, read_manifest

    explicit = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s) is not None}
    series = _series_overrides(args.series)
    if explicit:
        if args.cases:
            raise NeuroRADFMError("give either case folders / a manifest or --t1 ... --flair files, not both")
        return [(args.case_id or "case", lambda: load_case(explicit, case_id=args.case_id, sequences=series))]
    if not args.cases:
        raise NeuroRADFMError("nothing to predict: give a case folder, a manifest .csv or --t1 ... --flair")
    if len(args.cases) == 1 and args.cases[0].suffix.lower() == ".csv":
        if series:
            raise NeuroRADFMError("--series applies to DICOM study folders, not to a manifest")
        return [(entry.case_id, entry.load) for entry in read_manifest(args.cases[0])]
    return [(str(path), lambda path=path: load_case(path, sequences=series)) for path in args.cases]


def _predict(args: argparse.Namespace) -> int:
    from neuroradfm.batch import predict_cases
    from neuroradfm.demo import demo_bundle_path
    from neuroradfm.models.bundle import load_bundle

    bundle = load_bundle(args.model or demo_bundle_path())
    loaders = _case_loaders(args)
    result = predict_cases(loaders, bundle, args.out, device=args.device, progress=make_progress(args.progress),
                           overview=not args.no_overview)
    for case_id, folder in result.outputs.items():
        print(f"{case_id}: {folder}")
    for case_id, error in result.failures.items():
        print(f"FAILED {case_id}: {error}", file=sys.stderr)
    if result.failures and not result.outputs:
        return 2
    return 1 if result.failures else 0


def _phantom(args: argparse.Namespace) -> int:
    from neuroradfm.phantom import generate_cohort

    try:
        manifest = generate_cohort(args.out, n=args.n, sites=args.sites, seed=args.seed, native=args.native,
                                   native_fraction=args.native_fraction, spacing=args.spacing,
                                   progress=make_progress(args.progress))
    except ValueError as error:  # bad numbers on the command line: a usage error, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"manifest: {manifest}")
    return 0


def _train_baseline(args: argparse.Namespace) -> int:
    from neuroradfm.models.encoder import EncoderConfig
    from neuroradfm.preprocess import PreprocessSettings
    from neuroradfm.train.baseline import BaselineSettings, train_baseline

    settings = BaselineSettings(
        encoder=EncoderConfig(args.arch, widen_factor=args.widen, conv1_stride=2, no_max_pool=True),
        preprocessing=PreprocessSettings(spacing_mm=args.spacing, size=(args.size,) * 3),
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        tumour_weight=args.tumour_weight, device=args.device)
    card = {"name": args.name, "rebuild_command": " ".join(["neuroradfm", *sys.argv[1:]])}
    if args.demo:
        card.update({
            "description": "Demonstration model trained by neuroradfm on its synthetic phantom cohort.",
            "intended_use": "SYNTHETIC-DATA DEMONSTRATION ONLY - NOT FOR CLINICAL USE. Trained on simulated "
                            "phantoms; its outputs say nothing about real patients.",
        })
    path = train_baseline(args.manifest, args.out, settings, card=card, progress=make_progress(args.progress),
                          cache_dir=args.cache, metrics_path=args.metrics)
    print(f"bundle: {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from neuroradfm.demo import run_demo

    run_demo(args.out, device=args.device, progress=make_progress(args.progress))
    return 0


def _info(args: argparse.Namespace) -> int:
    from neuroradfm.models.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    card = bundle.card
    summary = {k: card.get(k) for k in ("name", "description", "intended_use", "architecture", "preprocessing",
                                         "content_hash", "rebuild_command")}
    summary["markers"] = {m.key: m.metrics for m in bundle.heads.markers}
    summary["survival"] = None if bundle.heads.cox is None else bundle.heads.cox.metrics
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _exit_on_sigterm()
    handler = {"predict": _predict, "phantom": _phantom, "train-baseline": _train_baseline, "demo": _demo,
               "info": _info}[args.command]
    try:
        return handler(args)
    except NeuroRADFMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
