"""Performance of the prediction path (issue 18), first part: where a case's time, memory and disk go today.

One run measures, side by side on this machine (noisy: read the ratios, not the seconds):
- ``case_seconds``: one BraTS-style phantom case (1 mm, its 197 x 233 x 189 grid; four NIfTI sequences) through
  ``neuroradfm predict`` in a fresh process, with the demo bundle: import, preprocessing, model and every head's
  map, output writing, timed from the stages the process reports (``--progress json``); ``peak_rss_mb`` of that
  process and ``output_mb_per_case`` of what it wrote;
- ``maps_over_forward``: the encoder forward that keeps what Grad-CAM needs plus every head's map at the bundle's
  CAM layer (what ``predict_case`` runs) over one plain forward without gradients, same input;
- ``dro_step_over_erm``: one MAE training step (forward, loss, backward, optimizer step) with Group-DRO's robust
  loss over the same step with the plain mean, same batch;
- ``startup_seconds``: the slower of ``neuroradfm --help`` and ``neuroradfm info`` (best of three each).

Still to come (issue 18): the naive side-by-side pipeline (``naive_case_seconds``, ``case_speedup``), the encoder's
share of the machine's matmul GFLOP/s and the cohort overlap; their keys are written as null.

Run: .venv/bin/python bench/perf.py [--work build/perf] [--no-results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from results_section import update_results

ROOT = Path(__file__).resolve().parent.parent
PERF_JSON = ROOT / "bench" / "perf.json"
HEADING = "## Performance (issue 18)"
BEGIN, END = "<!-- bench/perf.py: begin -->", "<!-- bench/perf.py: end -->"
PENDING = ("naive_case_seconds", "case_speedup", "raw_case_seconds", "encoder_gflops_fraction",
           "cohort_overlap_speedup")
CLI = [sys.executable, "-m", "neuroradfm"]


def _case(work: Path) -> Path:
    """A BraTS-style phantom case folder (1 mm), generated once into ``work``."""
    from neuroradfm.phantom import case_id, generate_case
    from neuroradfm.phantom.cohort import FILE_SUFFIX

    folder = work / case_id(0)
    if not (folder / "done").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        images, seg, _ = generate_case(0, seed=424242, n_sites=4, spacing=1.0)
        for key, image in [*images.items(), ("seg", seg)]:
            sitk.WriteImage(image, str(folder / f"{case_id(0)}-{FILE_SUFFIX[key]}.nii.gz"))
        (folder / "done").write_text("")
    return folder


def _predict_run(case: Path, out: Path, bundle: Path) -> dict:
    """``neuroradfm predict`` on one case in a fresh process: stage times from its JSON progress lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "NeuroRADFM")}
    command = [*CLI, "predict", str(case), "--model", str(bundle), "--out", str(out), "--progress", "json",
               "--device", "cpu"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first: dict[str, float] = {}
    for line in process.stdout:
        try:
            stage = json.loads(line).get("stage")
        except ValueError:
            continue
        first.setdefault(stage, time.perf_counter() - started)
    process.wait()
    total = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"predict failed ({process.returncode}): {process.stderr.read()[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"seconds": total, "stages_first_seen": first, "peak_rss_mb": peak_kb / 1024,
            "output_mb": sum(p.stat().st_size for p in files) / 2**20, "output_files": len(files)}


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

    def with_maps() -> None:
        activation, z = encode_for_cam(encoder, x, layer)
        embedding = z[0].detach().double().numpy()
        weights, biases = heads.marker_weights()
        cox_w, cox_b = heads.cox_weights()
        _, signed = map_weights(heads, weights @ embedding + biases, float(cox_w @ embedding + cox_b))
        cells = cams_at(layer, activation, z, torch.as_tensor(signed, dtype=torch.float32),
                        torch.as_tensor(heads.cam_reference))
        with torch.no_grad():
            upsample(cells, prepared.mask.shape)

    forward(), with_maps()  # warm-up
    plain, maps = _median_seconds(forward), _median_seconds(with_maps)
    return {"forward_seconds": plain, "forward_with_maps_seconds": maps, "maps_over_forward": maps / plain,
            "heads": len(heads.markers) + (heads.cox is not None), "layer": layer, "grid": list(x.shape[2:])}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "perf")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    from neuroradfm.demo import demo_bundle_path

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = demo_bundle_path()
    case = _case(args.work / "case")
    out = args.work / "predict-out"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    run = _predict_run(case, out, bundle)
    maps = _maps_over_forward(case, bundle)
    dro = _dro_step_over_erm()
    startup = _startup(bundle)
    stages = run["stages_first_seen"]
    perf = {
        "case_seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"], "output_mb_per_case": run["output_mb"],
        "maps_over_forward": maps["maps_over_forward"], "dro_step_over_erm": dro["dro_step_over_erm"],
        "startup_seconds": startup["startup_seconds"], **{key: None for key in PENDING},
        "details": {"case": {k: v for k, v in run.items() if k != "seconds"}, "maps": maps, "dro": dro,
                    "startup": startup, "case_size": list(sitk.ReadImage(str(next(case.glob("*t1c*")))).GetSize()),
                    "bundle": str(bundle.relative_to(ROOT)), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "date": datetime.date.today().isoformat(), "pending": list(PENDING)},
    }
    PERF_JSON.write_text(json.dumps(perf, indent=1) + "\n", encoding="utf-8")
    first_model = stages.get("encode")
    lines = [
        f"`.venv/bin/python bench/perf.py` ({perf['details']['date']}; {os.cpu_count()} cores; demo bundle; one "
        f"BraTS-style phantom case, 1 mm, {perf['details']['case_size']} voxels, NIfTI). `bench/perf.json` holds "
        "the numbers.", "",
        "| measure | value |", "|---|---|",
        f"| case_seconds (fresh `neuroradfm predict` process, end to end) | {run['seconds']:.1f} s |",
        f"| of which before the first progress line (imports) | {min(stages.values()):.1f} s |",
        *([f"| of which until the model starts (`encode`) | {first_model:.1f} s |"] if first_model else []),
        f"| peak_rss_mb | {run['peak_rss_mb']:.0f} MB |",
        f"| output_mb_per_case ({run['output_files']} files) | {run['output_mb']:.1f} MB |",
        f"| maps_over_forward (all {maps['heads']} heads at {maps['layer']}, grid {maps['grid']}) | "
        f"{maps['maps_over_forward']:.2f} ({maps['forward_with_maps_seconds']:.2f} s / "
        f"{maps['forward_seconds']:.2f} s) |",
        f"| dro_step_over_erm (MAE step, resnet10 x0.5, batch 4 of 48^3) | {dro['dro_step_over_erm']:.3f} |",
        f"| startup_seconds (`--help` {startup['help_seconds']:.2f} s, `info` {startup['info_seconds']:.2f} s) | "
        f"{startup['startup_seconds']:.2f} s |",
        "", "Pending (null in perf.json): " + ", ".join(PENDING) + ".",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        update_results(HEADING, BEGIN, END, f"{BEGIN}\n\n{text}\n\n{END}")


if __name__ == "__main__":
    main()
