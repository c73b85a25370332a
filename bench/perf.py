"""Performance of the prediction path (issue 18): where a case's time, memory and disk go, side by side.

One run measures, side by side on this machine (noisy: read the ratios, not the seconds):
- ``case_seconds``: one BraTS-style phantom case (1 mm, its 197 x 233 x 189 grid; four NIfTI sequences) through
  ``neuroradfm predict`` in a fresh process, with the demo bundle: import, preprocessing, model and every head's
  map, output writing, timed from the stages the process reports (``--progress json``); median of ``--repeats``
  runs; ``peak_rss_mb`` of those processes and ``output_mb_per_case`` of what one wrote;
- ``naive_case_seconds``, ``case_speedup``: the same case through bench/naive_case.py, the pipeline written the
  obvious way with the same libraries, architecture and weights (MONAI dictionary transforms at full resolution,
  MONAI's GradCAM once per head, one ``sitk.Resample`` per map, float32 NRRD), also a fresh process each time, run
  alternately with ours; the run fails unless both give the same numbers (probabilities within 1e-3) and maps
  (correlation > 0.9 inside the brain);
- ``raw_case_seconds``: a raw head case (the phantom's native acquisition: skull on, tilted, 0.9 x 0.9 x 3 mm, FLAIR
  on its own grid) through ``neuroradfm predict`` in a fresh process: N4, co-registration, deepbet, affine to MNI152;
- ``maps_over_forward``: the encoder forward that keeps what Grad-CAM needs plus every head's map at the bundle's
  CAM layer (what ``predict_case`` runs) over one plain forward without gradients, same input;
- ``encoder_gflops_fraction``: the encoder forward's GFLOP/s (no grad, the bundle's encoder at its 1 x 4 x 96^3
  input; FLOPs counted by torch.utils.flop_counter) over float32 2048 x 2048 matmul GFLOP/s, both timed alternately
  in this run; with per-convolution rates and the cheap variants (inference_mode, channels_last_3d, oneDNN off,
  one thread) in ``details.encoder``, and the paper's resnet50 at 128^3 when one forward takes under 60 s;
- ``dro_step_over_erm``: one MAE training step (forward, loss, backward, optimizer step) with Group-DRO's robust
  loss over the same step with the plain mean, same batch;
- ``startup_seconds``: the slower of ``neuroradfm --help`` and ``neuroradfm info`` (best of three each);
- ``cohort_overlap_speedup``: bench/cohort_overlap.py on a 16-case phantom cohort (``--cohort N``; 0 skips it);
- ``brats_case_seconds``, ``sri24_registration_saved_seconds``: the case in the BraTS format (SRI24 space,
  240 x 240 x 155) through ``neuroradfm predict``, and its preprocessing with the fixed SRI24-to-MNI152 affine against
  the per-case registration it replaces.

Run: .venv/bin/python bench/perf.py [--work build/perf] [--repeats 3] [--cohort 16] [--no-results]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from results_section import update_results
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
PERF_JSON = ROOT / "bench" / "perf.json"
HEADING = "## Performance (issue 18)"
BEGIN, END = "<!-- bench/perf.py: begin -->", "<!-- bench/perf.py: end -->"
CLI = [sys.executable, "-m", "neuroradfm"]
NAIVE = ROOT / "bench" / "naive_case.py"
COHORT = ROOT / "bench" / "cohort_overlap.py"
PROBABILITY_TOLERANCE = 1e-3
"""Naive and ours must give the same probabilities (measured: within 1e-5) for the comparison to be fair."""
MIN_MAP_CORRELATION = 0.9
"""... and the same maps: Pearson correlation inside the brain on the reference grid (measured: above 0.99)."""
MATMUL_SIZE = 2048
PAPER_SECONDS_LIMIT = 60.0
"""The paper's encoder (resnet50, 128^3) is measured only when one forward takes less than this."""


def _case(work: Path, native: bool = False, sri24: bool = False) -> Path:
    """A BraTS-style phantom case folder (1 mm, in template space), or with ``native`` a raw head acquisition
    (skull on, tilted, thick slices), or with ``sri24`` the BraTS-style case in the BraTS format (SRI24 space,
    240 x 240 x 155: ``neuroradfm.preprocess.sri24.to_sri24``), generated once into ``work``."""
    from neuroradfm.phantom import case_id, generate_case
    from neuroradfm.phantom.cohort import FILE_SUFFIX
    from neuroradfm.preprocess.sri24 import to_sri24

    folder = work / case_id(0)
    if not (folder / "done").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        images, seg, _ = generate_case(0, seed=424242, n_sites=4, native=native, spacing=1.0)
        for key, image in [*images.items(), ("seg", seg)]:
            if sri24:
                image = to_sri24(image, sitk.sitkNearestNeighbor if key == "seg" else sitk.sitkLinear)
            sitk.WriteImage(image, str(folder / f"{case_id(0)}-{FILE_SUFFIX[key]}.nii.gz"))
        (folder / "done").write_text("")
    return folder


def _sri24_registration(case: Path, bundle_path: Path) -> dict:
    """The BraTS-format case's preprocessing with the fixed SRI24-to-MNI152 affine (what ``auto`` does) against the
    per-case affine registration it replaces (``template_registration="affine"``), in this process, alternately."""
    from dataclasses import replace

    from neuroradfm.io import load_case
    from neuroradfm.models.bundle import read_bundle_card
    from neuroradfm.preprocess import PreprocessSettings, preprocess_case

    card = read_bundle_card(bundle_path)
    settings = replace(PreprocessSettings.from_dict(card["preprocessing"]), n4=False)  # N4: the same on both sides
    loaded = load_case(case)
    steps: dict[str, str] = {}

    def fixed() -> None:
        steps["fixed"] = preprocess_case(loaded, settings).steps["template_registration"]

    def registered() -> None:
        steps["registered"] = preprocess_case(loaded, replace(settings, template_registration="affine")).steps[
            "template_registration"]

    times = _alternately({"fixed": fixed, "registered": registered}, rounds=2, warm_up=False)
    return {"fixed_seconds": times["fixed"], "registered_seconds": times["registered"],
            "saved_seconds": times["registered"] - times["fixed"], "steps": steps}


def _child(command: list[str]) -> dict:
    """One fresh process: wall seconds, its own CPU seconds and peak RSS (os.wait4), the first time each
    ``stage`` of its JSON lines was seen, and its last JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "NeuroRADFM")}
    with tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        first: dict[str, float] = {}
        last: dict = {}
        for line in process.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                last = record
                if "stage" in record:
                    first.setdefault(record["stage"], time.perf_counter() - started)
        _, status, usage = os.wait4(process.pid, 0)
        total = time.perf_counter() - started
        process.stdout.close()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(map(str, command[1:4]))} failed ({process.returncode}): "
                               f"{errors.read()[-2000:]}")
    return {"seconds": total, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "stages_first_seen": first, "last": last}


def _clean(folder: Path) -> Path:
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    return folder


def _predict_run(case: Path, out: Path, bundle: Path) -> dict:
    """``neuroradfm predict`` on one case in a fresh process: stage times from its JSON progress lines."""
    run = _child([*CLI, "predict", str(case), "--model", str(bundle), "--out", str(_clean(out)), "--progress", "json",
                  "--device", "cpu"])
    files = [p for p in out.rglob("*") if p.is_file()]
    return {**run, "output_mb": sum(p.stat().st_size for p in files) / 2**20, "output_files": len(files)}


def _naive_run(case: Path, out: Path, bundle: Path) -> dict:
    """bench/naive_case.py on the same case in a fresh process; its stage times (since its start) as it reports."""
    run = _child([sys.executable, str(NAIVE), str(case), "--out", str(_clean(out)), "--bundle", str(bundle)])
    return {**run, "stages": run.pop("last")}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _same_result(case: Path, ours: Path, naive: Path) -> dict:
    """Naive and ours must agree: every probability within PROBABILITY_TOLERANCE, the Cox risk likewise, and every
    map correlated above MIN_MAP_CORRELATION inside the brain (the reference's non-zero voxels; either file format:
    a correlation does not see the maps' scale)."""
    from neuroradfm.phantom.cohort import FILE_SUFFIX

    mine = json.loads((ours / "predictions.json").read_text(encoding="utf-8"))
    theirs = json.loads((naive / "predictions.json").read_text(encoding="utf-8"))
    differences = {m["key"]: abs(m["probability"] - theirs["probabilities"][m["key"]]) for m in mine["markers"]}
    risk = None
    if mine.get("survival") and theirs.get("risk_score") is not None:
        risk = abs(mine["survival"]["risk_score"] - theirs["risk_score"])
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(next(case.glob(f"*-{FILE_SUFFIX['t1ce']}.nii.gz"))))) != 0
    correlations = {}
    for key in theirs["maps"]:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"heatmap_{key}.nrrd")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(naive / f"heatmap_{key}.nrrd")))
        correlations[key] = _pearson(a[brain], b[brain])
    out = {"max_probability_difference": max(differences.values()), "risk_difference": risk,
           "min_map_correlation": min(correlations.values()), "map_correlations": correlations,
           "probability_differences": differences}
    if out["max_probability_difference"] > PROBABILITY_TOLERANCE or (risk or 0.0) > PROBABILITY_TOLERANCE:
        raise AssertionError(f"naive and ours disagree on the numbers: {out}")
    if out["min_map_correlation"] <= MIN_MAP_CORRELATION:
        raise AssertionError(f"naive and ours disagree on the maps: {out}")
    return out


def _side_by_side(case: Path, work: Path, bundle: Path, repeats: int) -> dict:
    """Ours and the naive pipeline alternately, each a fresh process every time, so drift on a noisy machine hits
    both alike; medians of ``repeats`` runs each, and the check that both give the same result."""
    ours, naive = [], []
    for _ in range(repeats):
        ours.append(_predict_run(case, work / "predict-out", bundle))
        naive.append(_naive_run(case, work / "naive-out", bundle))
    agreement = _same_result(case, work / "predict-out" / case.name, work / "naive-out")

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    return {"ours": ours, "naive": naive, "agreement": agreement,
            "case_seconds": median(ours, "seconds"), "naive_case_seconds": median(naive, "seconds"),
            "case_cpu_seconds": median(ours, "cpu_seconds"), "naive_cpu_seconds": median(naive, "cpu_seconds"),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in ours),
            "naive_peak_rss_mb": max(run["peak_rss_mb"] for run in naive)}


def _median_seconds(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _maps_over_forward(case: Path, bundle_path: Path) -> dict:
    from neuroradfm.cam import cams_at, encode_for_cam, upsample
    from neuroradfm.io import load_case
    from neuroradfm.models.bundle import load_bundle
    from neuroradfm.predict import map_weights
    from neuroradfm.preprocess import preprocess_case

    bundle = load_bundle(bundle_path)
    heads = bundle.require_heads()
    prepared = preprocess_case(load_case(case), bundle.preprocessing)
    x = torch.from_numpy(prepared.channels[None])
    encoder = bundle.encoder.eval()
    layer = heads.cam_layer

    def forward() -> None:
        with torch.no_grad():
            encoder(x)

    def with_maps() -> None:  # as predict_prepared_batch: a copy of the layer's activation per head
        copies = len(heads.markers) + (heads.cox is not None)
        activation, z = encode_for_cam(encoder, x, layer, copies=copies)
        embedding = z[0].detach().double().numpy()
        weights, biases = heads.marker_weights()
        cox_w, cox_b = heads.cox_weights()
        _, signed = map_weights(heads, weights @ embedding + biases, float(cox_w @ embedding + cox_b))
        cells = cams_at(layer, activation, z, torch.as_tensor(signed, dtype=torch.float32),
                        torch.as_tensor(heads.cam_reference), copies=copies)
        with torch.no_grad():
            upsample(cells, prepared.mask.shape)

    forward(), with_maps()  # warm-up
    plain, maps = _median_seconds(forward), _median_seconds(with_maps)
    return {"forward_seconds": plain, "forward_with_maps_seconds": maps, "maps_over_forward": maps / plain,
            "heads": len(heads.markers) + (heads.cox is not None), "layer": layer, "grid": list(x.shape[2:])}


def _flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward (torch's counter: 2 per multiply-add of every convolution and matmul)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def _alternately(functions: dict, rounds: int, warm_up: bool = True) -> dict[str, float]:
    """Median seconds of each function, timed in turn ``rounds`` times (after one warm-up call each): drift on a
    noisy machine hits all of them alike."""
    for function in functions.values() if warm_up else ():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _conv_rates(encoder: nn.Module, x: torch.Tensor) -> list[dict]:
    """Each Conv3d of ``encoder`` timed alone on the input it gets in the forward: GFLOP/s and FLOPs per byte moved
    (input, output, weights; float32), to tell compute-bound layers from the rest."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name: str):
        def hook(module, args, output) -> None:
            seen[name] = (args[0], output)
        return hook

    modules = {name: m for name, m in encoder.named_modules() if isinstance(m, nn.Conv3d)}
    hooks = [m.register_forward_hook(keep(name)) for name, m in modules.items()]
    with torch.inference_mode():
        encoder(x)
    for hook in hooks:
        hook.remove()
    rows = []
    for name, (inputs, output) in seen.items():
        conv = modules[name]
        flops = _flops(conv, inputs)

        def run(conv: nn.Module = conv, inputs: torch.Tensor = inputs) -> None:
            with torch.inference_mode():
                conv(inputs)

        seconds = _alternately({"conv": run}, 3)["conv"]
        moved = 4 * (inputs.numel() + output.numel() + conv.weight.numel())
        rows.append({"layer": name, "kernel": conv.kernel_size[0], "stride": conv.stride[0],
                     "in": list(inputs.shape[1:]), "out": list(output.shape[1:]), "gflop": flops / 1e9,
                     "seconds": seconds, "gflops_per_s": flops / seconds / 1e9, "flop_per_byte": flops / moved})
    return rows


def _encoder_gflops(bundle_path: Path) -> dict:
    """The bundle's encoder forward (no grad, 1 x 4 x size^3) against float32 matmul, both timed alternately; then
    what moves the ratio: inference_mode, channels_last_3d, oneDNN off, one thread; per-convolution rates; and the
    paper's resnet50 at 128^3 when one forward takes under PAPER_SECONDS_LIMIT."""
    from neuroradfm.models.bundle import load_bundle
    from neuroradfm.models.encoder import Encoder, EncoderConfig

    torch.manual_seed(0)
    bundle = load_bundle(bundle_path)
    encoder, size = bundle.encoder.eval(), bundle.preprocessing.size
    x = torch.randn(1, 4, *size)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    matmul_flops, flops = 2 * MATMUL_SIZE**3, _flops(encoder, x)
    channels_last = copy.deepcopy(encoder).to(memory_format=torch.channels_last_3d)
    x_last = x.to(memory_format=torch.channels_last_3d)

    def forward(model: nn.Module = encoder, inputs: torch.Tensor = x, mode=torch.no_grad) -> None:
        with mode():
            model(inputs)

    def without_onednn() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the flags' context warns of a TF32 setting that float32 CPU ignores
            with torch.backends.mkldnn.flags(enabled=False):
                forward()

    seconds = _alternately({"matmul": lambda: torch.matmul(a, b), "no_grad": forward,
                            "inference_mode": lambda: forward(mode=torch.inference_mode),
                            "channels_last_3d": lambda: forward(channels_last, x_last, torch.inference_mode)}, 5)
    slow = _alternately({"no_grad": forward, "onednn_off": without_onednn}, 2, warm_up=False)  # several s each
    seconds["onednn_off"] = seconds["no_grad"] * slow["onednn_off"] / slow["no_grad"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _alternately({"matmul": lambda: torch.matmul(a, b), "no_grad": forward}, 3)
    finally:
        torch.set_num_threads(threads)
    matmul = matmul_flops / seconds["matmul"] / 1e9
    achieved = flops / seconds["no_grad"] / 1e9
    convs = _conv_rates(encoder, x)
    out = {"input": [1, 4, *size], "gflop": flops / 1e9, "forward_seconds": seconds["no_grad"],
           "gflops_per_s": achieved, "matmul_gflops_per_s": matmul, "matmul_size": MATMUL_SIZE, "threads": threads,
           "encoder_gflops_fraction": achieved / matmul,
           "variants_over_no_grad": {name: seconds["no_grad"] / seconds[name]
                                     for name in ("inference_mode", "channels_last_3d", "onednn_off")},
           "one_thread": {"gflops_per_s": flops / single["no_grad"] / 1e9,
                          "matmul_gflops_per_s": matmul_flops / single["matmul"] / 1e9,
                          "fraction": single["matmul"] * flops / (single["no_grad"] * matmul_flops)},
           "conv_share_of_forward": sum(row["seconds"] for row in convs) / seconds["inference_mode"], "convs": convs}

    paper = Encoder(EncoderConfig("resnet50")).eval()
    x_paper = torch.randn(1, 4, 128, 128, 128)
    started = time.perf_counter()
    forward(paper, x_paper, torch.inference_mode)
    first = time.perf_counter() - started
    out["paper"] = {"arch": "resnet50", "input": [1, 4, 128, 128, 128], "first_forward_seconds": first}
    if first < PAPER_SECONDS_LIMIT:
        paper_flops = _flops(paper, x_paper)
        timed = _alternately({"matmul": lambda: torch.matmul(a, b),
                              "no_grad": lambda: forward(paper, x_paper)}, 2, warm_up=False)
        out["paper"].update({"gflop": paper_flops / 1e9, "forward_seconds": timed["no_grad"],
                             "gflops_per_s": paper_flops / timed["no_grad"] / 1e9,
                             "fraction": timed["matmul"] * paper_flops / (timed["no_grad"] * matmul_flops)})
    return out


def _cohort_overlap(work: Path, bundle: Path, cases: int) -> dict | None:
    """bench/cohort_overlap.py's ``measure``: ``neuroradfm predict MANIFEST`` serial against overlapped, on a
    BraTS-style phantom cohort of ``cases`` cases (one template brain: quick to generate; generated once into
    ``work``). None while that file is missing or with ``cases`` 0."""
    if not COHORT.is_file() or cases <= 0:
        return None
    from cohort_overlap import measure

    from neuroradfm.phantom import PhantomOptions, generate_cohort

    folder = work / "cohort"
    manifest, settings = folder / "manifest.csv", folder / "phantom.json"
    if not (manifest.is_file() and json.loads(settings.read_text(encoding="utf-8")).get("n") == cases):
        generate_cohort(_clean(folder), cases, sites=4, seed=424242, options=PhantomOptions(anatomy="fixed"))
    return measure(manifest, model=bundle, device="cpu")


def _dro_step_over_erm() -> dict:
    from neuroradfm.dro import GroupDRO
    from neuroradfm.models.encoder import Encoder, EncoderConfig
    from neuroradfm.ssl import MethodSettings, build_method
    from neuroradfm.ssl.mae import random_mask

    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig("resnet10", widen_factor=0.5, conv1_stride=2, no_max_pool=True))
    model = build_method("mae", encoder, MethodSettings(), crop_size=48)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    batch = {"view1": torch.randn(4, 4, 48, 48, 48),
             "mask": torch.stack([random_mask((48,) * 3, 16, 0.6, rng) for _ in range(4)])}
    groups = torch.tensor([0, 1, 2, 3])
    dro = GroupDRO(["a", "b", "c", "d"], mode="exponentiated", eta_q=0.01)

    def step(robust: bool) -> None:
        losses = model(batch)
        loss = dro.update(losses, groups) if robust else losses.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(False), step(True)  # warm-up
    erm, robust = [], []
    for _ in range(5):  # interleaved, so drift on a noisy machine hits both alike
        erm.append(_median_seconds(lambda: step(False), 1))
        robust.append(_median_seconds(lambda: step(True), 1))
    return {"erm_step_seconds": statistics.median(erm), "dro_step_seconds": statistics.median(robust),
            "dro_step_over_erm": statistics.median(robust) / statistics.median(erm)}


def _startup(bundle: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "NeuroRADFM")}
    out = {}
    for name, args in (("help", ["--help"]), ("info", ["info", str(bundle)])):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([*CLI, *args], check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - started)
        out[f"{name}_seconds"] = min(times)
    out["startup_seconds"] = max(out.values())
    return out


def _lines(perf: dict, side: dict, raw: dict, maps: dict, encoder: dict, dro: dict, startup: dict,
           cohort: dict | None) -> list[str]:
    """The generated RESULTS.md section: one line per figure, saying what was compared."""
    details = perf["details"]
    ours, naive = side["ours"][-1], side["naive"][-1]
    stages, agree = ours["stages_first_seen"], side["agreement"]
    naive_stages = naive["stages"]
    first_model = stages.get("encode")
    raw_stages = raw["stages_first_seen"]
    slow = sorted(encoder["convs"], key=lambda row: row["gflops_per_s"])[:3]
    stem = max(encoder["convs"], key=lambda row: row["gflop"])
    paper = encoder["paper"]
    variants = encoder["variants_over_no_grad"]
    repeats = len(side["ours"])
    return [
        f"`.venv/bin/python bench/perf.py` ({details['date']}; {details['cpus']} cores, torch "
        f"{details['torch']} with {encoder['threads']} threads; demo bundle; one BraTS-style phantom case, 1 mm, "
        f"{details['case_size']} voxels, NIfTI). `bench/perf.json` holds the numbers. Every case runs in a fresh "
        f"process (imports included), ours and the naive pipeline alternately; medians of {repeats} runs each.", "",
        "| measure | value |", "|---|---|",
        f"| case_seconds (`neuroradfm predict`, end to end; CPU {side['case_cpu_seconds']:.1f} s) | "
        f"{perf['case_seconds']:.1f} s |",
        f"| of which before the first progress line (imports) | {min(stages.values()):.1f} s |",
        *([f"| of which until the model starts (`encode`) | {first_model:.1f} s |"] if first_model else []),
        f"| naive_case_seconds (bench/naive_case.py: MONAI dictionary transforms at full resolution, GradCAM once "
        f"per head, a `sitk.Resample` and a float32 NRRD per map; CPU {side['naive_cpu_seconds']:.1f} s; imports "
        f"{naive_stages['imports']:.1f} s, preprocessed at {naive_stages['preprocessed']:.1f} s, GradCAM "
        f"{naive_stages['gradcam_seconds']:.1f} s, resampling {naive_stages['resample_seconds']:.1f} s, writing "
        f"{naive_stages['write_seconds']:.1f} s) | {perf['naive_case_seconds']:.1f} s |",
        f"| case_speedup (naive over ours, wall; CPU seconds: "
        f"{side['naive_cpu_seconds'] / side['case_cpu_seconds']:.2f}) | {perf['case_speedup']:.2f} |",
        f"| same result (checked in the run): largest probability difference, Cox risk difference; lowest map "
        f"correlation inside the brain | {agree['max_probability_difference']:.1e}, "
        f"{agree['risk_difference'] or 0:.1e}; {agree['min_map_correlation']:.4f} |",
        f"| raw_case_seconds (native phantom: skull on, tilted, {details['raw_case_size']} voxels; N4, "
        f"co-registration, deepbet, affine to MNI152; `predict` first reached `brain` at "
        f"{raw_stages.get('brain', 0):.1f} s, `register` at {raw_stages.get('register', 0):.1f} s, `resample` at "
        f"{raw_stages.get('resample', 0):.1f} s) "
        f"| {perf['raw_case_seconds']:.1f} s |",
        f"| brats_case_seconds (the same case in the BraTS format: SRI24 header, {details['brats_case_size']} voxels; "
        f"`{details['sri24']['steps']['fixed']}`) | {perf['brats_case_seconds']:.1f} s |",
        f"| sri24_registration_saved_seconds (its preprocessing without N4, in-process: fixed affine "
        f"{details['sri24']['fixed_seconds']:.1f} s against per-case affine registration "
        f"{details['sri24']['registered_seconds']:.1f} s) | {perf['sri24_registration_saved_seconds']:.1f} s |",
        f"| peak_rss_mb (the larger of: one case, {side['peak_rss_mb']:.0f} MB"
        + (f"; the overlapped cohort's process tree, {cohort['peak_rss_mb']:.0f} MB (PSS "
           f"{cohort['peak_pss_mb']:.0f} MB)" if cohort else "")
        + f"; naive case {side['naive_peak_rss_mb']:.0f} MB) | {perf['peak_rss_mb']:.0f} MB |",
        f"| output_mb_per_case ({ours['output_files']} files) | {perf['output_mb_per_case']:.1f} MB |",
        f"| maps_over_forward (all {maps['heads']} heads at {maps['layer']}, grid {maps['grid']}) | "
        f"{maps['maps_over_forward']:.2f} ({maps['forward_with_maps_seconds']:.2f} s / "
        f"{maps['forward_seconds']:.2f} s) |",
        f"| encoder_gflops_fraction (encoder forward, no grad, {encoder['input']}: {encoder['gflop']:.1f} GFLOP in "
        f"{encoder['forward_seconds']:.2f} s = {encoder['gflops_per_s']:.0f} GFLOP/s, over float32 "
        f"{encoder['matmul_size']}^2 matmul {encoder['matmul_gflops_per_s']:.0f} GFLOP/s) | "
        f"{perf['encoder_gflops_fraction']:.2f} |",
        f"| encoder forward speed-up over no_grad: inference_mode {variants['inference_mode']:.2f}, "
        f"channels_last_3d {variants['channels_last_3d']:.2f}, oneDNN off {variants['onednn_off']:.2f}; one thread: "
        f"fraction {encoder['one_thread']['fraction']:.2f} | |",
        f"| encoder's convolutions alone: {encoder['conv_share_of_forward']:.0%} of the forward; the stem "
        f"({stem['layer']}, {stem['kernel']}^3 over {stem['in'][0]} channels) {stem['gflop']:.1f} GFLOP at "
        f"{stem['gflops_per_s']:.0f} GFLOP/s; slowest: "
        + ", ".join(f"{row['layer']} {row['gflops_per_s']:.0f} GFLOP/s ({row['out'][0]} x {row['out'][1]}^3 out, "
                    f"{row['flop_per_byte']:.0f} FLOP/byte)" for row in slow) + " | |",
        (f"| paper's encoder (resnet50, 1 x 4 x 128^3, random weights): {paper['gflop']:.0f} GFLOP in "
         f"{paper['forward_seconds']:.1f} s = {paper['gflops_per_s']:.0f} GFLOP/s | {paper['fraction']:.2f} |"
         if "fraction" in paper else
         f"| paper's encoder (resnet50, 128^3): one forward took {paper['first_forward_seconds']:.0f} s, not measured "
         f"| |"),
        f"| dro_step_over_erm (MAE step, resnet10 x0.5, batch 4 of 48^3) | {dro['dro_step_over_erm']:.3f} |",
        f"| startup_seconds (`--help` {startup['help_seconds']:.2f} s, `info` {startup['info_seconds']:.2f} s) | "
        f"{startup['startup_seconds']:.2f} s |",
        (f"| cohort_overlap_speedup (bench/cohort_overlap.py: {cohort['cases']} BraTS-style cases, `predict MANIFEST` "
         f"in a fresh process, `--workers 0` {cohort['serial_cases_per_min']:.2f} cases/min against "
         f"{cohort['workers']} workers {cohort['overlap_cases_per_min']:.2f} cases/min) | "
         f"{perf['cohort_overlap_speedup']:.2f} |"
         if cohort else "| cohort_overlap_speedup | not measured (`--cohort 0` or no bench/cohort_overlap.py) |"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "perf")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs of ours and of the naive case")
    parser.add_argument("--cohort", type=int, default=16, help="cases of the cohort overlap run (0: skip it)")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    from neuroradfm.demo import demo_bundle_path

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = demo_bundle_path()
    case = _case(args.work / "case")
    raw_case = _case(args.work / "raw-case", native=True)
    brats_case = _case(args.work / "brats-case", sri24=True)
    brats = _predict_run(brats_case, args.work / "brats-out", bundle)
    sri24 = _sri24_registration(brats_case, bundle)
    side = _side_by_side(case, args.work, bundle, max(1, args.repeats))
    raw = _predict_run(raw_case, args.work / "raw-out", bundle)
    maps = _maps_over_forward(case, bundle)
    encoder = _encoder_gflops(bundle)
    dro = _dro_step_over_erm()
    startup = _startup(bundle)
    cohort = _cohort_overlap(args.work, bundle, args.cohort)
    ours = side["ours"][-1]
    perf = {
        "case_seconds": side["case_seconds"],
        "peak_rss_mb": max(side["peak_rss_mb"], cohort["peak_rss_mb"] if cohort else 0.0),
        "output_mb_per_case": ours["output_mb"],
        "maps_over_forward": maps["maps_over_forward"], "dro_step_over_erm": dro["dro_step_over_erm"],
        "startup_seconds": startup["startup_seconds"], "naive_case_seconds": side["naive_case_seconds"],
        "case_speedup": side["naive_case_seconds"] / side["case_seconds"], "raw_case_seconds": raw["seconds"],
        "encoder_gflops_fraction": encoder["encoder_gflops_fraction"],
        "cohort_overlap_speedup": None if cohort is None else cohort["cohort_overlap_speedup"],
        "brats_case_seconds": brats["seconds"], "sri24_registration_saved_seconds": sri24["saved_seconds"],
        "details": {
            "case": {k: v for k, v in ours.items() if k not in ("seconds", "last")},
            "side_by_side": {k: v for k, v in side.items() if k not in ("ours", "naive")}
            | {"ours_seconds": [run["seconds"] for run in side["ours"]],
               "naive_seconds": [run["seconds"] for run in side["naive"]],
               "naive_stages": side["naive"][-1]["stages"],
               "fairness": "each case a fresh process (imports included), ours and naive alternately; both use "
                           f"{torch.get_num_threads()} torch threads (os.cpu_count(); torch's default here)"},
            "raw_case": {k: v for k, v in raw.items() if k != "last"},
            "brats_case": {k: v for k, v in brats.items() if k != "last"}, "sri24": sri24,
            "brats_case_size": list(sitk.ReadImage(str(next(brats_case.glob("*t1c*")))).GetSize()),
            "maps": maps, "encoder": encoder, "dro": dro, "startup": startup, "cohort": cohort,
            "case_size": list(sitk.ReadImage(str(next(case.glob("*t1c*")))).GetSize()),
            "raw_case_size": list(sitk.ReadImage(str(next(raw_case.glob("*t1c*")))).GetSize()),
            "bundle": str(bundle.relative_to(ROOT)), "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat()},
    }
    PERF_JSON.write_text(json.dumps(perf, indent=1) + "\n", encoding="utf-8")
    text = "\n".join(_lines(perf, side, raw, maps, encoder, dro, startup, cohort))
    print(text)
    if not args.no_results:
        update_results(HEADING, BEGIN, END, f"{BEGIN}\n\n{text}\n\n{END}")


if __name__ == "__main__":
    main()
