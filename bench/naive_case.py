"""The naive side-by-side baseline of bench/perf.py (issue 18): one case written the obvious way.

Same libraries, same architecture and weights and the same steps as ``neuroradfm predict``, none of its shortcuts:
- MONAI dictionary transforms on the sequences at their full resolution: LoadImaged, EnsureChannelFirstd,
  Orientationd; N4 as a Lambdad around SimpleITK's N4 (our recipe: head mask = Otsu's largest part, holes filled;
  fitted on a copy shrunk to ~6 mm, the bias field expanded back); ResampleToMatchd onto the bundle's model grid
  (the case is already in template space: no registration, the decision ours takes too); the brain mask (the
  skull-stripped reference's non-zero voxels, resampled likewise) by MaskIntensityd, the brain's intensities clipped
  to their 0.5-99.5 percentiles, NormalizeIntensityd inside it;
- the bundle's encoder and heads as one network (``neuroradfm.cam.LinearHeadModel``), one forward for the numbers;
- MONAI's GradCAM once per head (a forward and a backward each) at the bundle's CAM layer for the predicted call
  (the head's row negated for a negative call: ``neuroradfm.predict.map_weights``), against the bundle's cohort
  reference activation as ours is (``ReferencedGradCAM``: MONAI's map with A - R in place of A);
- each map resampled back onto the reference sequence's grid with one ``sitk.Resample`` and written as a gzip
  float32 NRRD by SimpleITK; the numbers as JSON.

N4 at full resolution (no shrinking) is not the default: one 197 x 233 x 189 sequence took 517 s on the 2-core
machine (``--n4-full-res`` runs it). bench/perf.py runs this in a fresh process, as it runs ``neuroradfm predict``;
torch uses every core. The last stdout line is JSON: seconds since the start at each stage, and the maps' parts.

Run: PYTHONPATH=NeuroRADFM .venv/bin/python bench/naive_case.py CASE_FOLDER --out DIR [--bundle DIR]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import (  # noqa: E402
    Compose,
    CopyItemsd,
    EnsureChannelFirstd,
    Lambdad,
    LoadImaged,
    MaskIntensityd,
    NormalizeIntensityd,
    Orientationd,
    ResampleToMatchd,
    ScaleIntensity,
)
from monai.visualize import GradCAM  # noqa: E402

from neuroradfm import SEQUENCES  # noqa: E402
from neuroradfm.cam import LinearHeadModel  # noqa: E402
from neuroradfm.models.bundle import load_bundle  # noqa: E402
from neuroradfm.phantom.cohort import FILE_SUFFIX  # noqa: E402
from neuroradfm.predict import map_weights  # noqa: E402
from neuroradfm.preprocess import model_grid  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ReferencedGradCAM(GradCAM):
    """MONAI's GradCAM, its channel weights applied to the activation minus the bundle's cohort reference (the map
    ours makes: neuroradfm.cam); everything else, one forward and one backward per call, is MONAI's."""

    def __init__(self, *args, reference: torch.Tensor, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reference = reference

    def compute_map(self, x, class_idx=None, retain_graph=False, layer_idx=-1, **kwargs):
        _, acti, grad = self.nn_module(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
        acti, grad = acti[layer_idx] - self.reference, grad[layer_idx]
        weights = grad.flatten(2).mean(2)[:, :, None, None, None]
        return F.relu((weights * acti).sum(1, keepdim=True))


def n4(image: MetaTensor, full_res: bool = False) -> MetaTensor:
    """SimpleITK's N4 example on one channel-first MONAI image (Otsu mask; shrunk to ~6 mm unless ``full_res``)."""
    array = image[0].numpy().transpose(2, 1, 0)  # MONAI (i, j, k) -> SimpleITK's (k, j, i)
    spacing = [float(s) for s in image.pixdim]
    itk_image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    itk_image.SetSpacing(spacing)
    parts = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.OtsuThreshold(itk_image, 0, 1)), sortByObjectSize=True)
    mask = sitk.BinaryFillhole(sitk.Cast(parts == 1, sitk.sitkUInt8))  # the head: Otsu, its largest part, filled
    shrink = [1] * 3 if full_res else [max(1, round(6.0 / s)) for s in spacing]
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([20, 20, 20])
    corrector.Execute(sitk.Shrink(itk_image, shrink), sitk.Shrink(mask, shrink))
    corrected = itk_image / sitk.Exp(corrector.GetLogBiasFieldAsImage(itk_image))
    out = torch.from_numpy(sitk.GetArrayFromImage(corrected).transpose(2, 1, 0).copy())[None]
    return MetaTensor(out, affine=image.affine, meta=image.meta)


def clip_inside(image: torch.Tensor) -> torch.Tensor:
    """The brain's intensities clipped to their 0.5 and 99.5 percentiles (as ours, before the z-score)."""
    inside = image != 0
    low, high = np.percentile(image[inside].numpy(), [0.5, 99.5])
    return torch.where(inside, image.clamp(float(low), float(high)), image)


def grid_image(settings) -> tuple[sitk.Image, MetaTensor]:
    """The bundle's model grid as SimpleITK and as a MONAI image (RAS affine) for ResampleToMatchd."""
    grid = model_grid(settings)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(grid.GetDirection()).reshape(3, 3) * np.asarray(grid.GetSpacing())
    ijk_to_lps[:3, 3] = grid.GetOrigin()
    return grid, MetaTensor(torch.zeros(1, *grid.GetSize()), affine=torch.as_tensor(LPS_TO_RAS @ ijk_to_lps))


def run(case: Path, out: Path, bundle_path: Path, full_res_n4: bool = False) -> dict:
    """The whole naive case; returns the numbers and stage times (seconds since the process started)."""
    torch.set_num_threads(os.cpu_count() or 1)
    stages = {"imports": time.perf_counter() - STARTED}
    bundle = load_bundle(bundle_path)
    heads = bundle.require_heads()
    grid, grid_mt = grid_image(bundle.preprocessing)
    files = {key: str(next(case.glob(f"*-{FILE_SUFFIX[key]}.nii.gz"))) for key in SEQUENCES}
    keys, reference = list(SEQUENCES), bundle.preprocessing.reference
    transforms = Compose([
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS"),
        CopyItemsd(reference, names="brain"),  # skull-stripped input: the brain is the reference's non-zero voxels
        Lambdad("brain", lambda image: (image != 0).float()),
        Lambdad(keys, lambda image: n4(image, full_res_n4)),
        ResampleToMatchd([*keys, "brain"], key_dst="grid", mode="bilinear", padding_mode="zeros"),
        Lambdad("brain", lambda mask: mask > 0.5),
        MaskIntensityd(keys, mask_key="brain"),
        Lambdad(keys, clip_inside),
        NormalizeIntensityd(keys, nonzero=True),
    ])
    data = transforms({**files, "grid": grid_mt})
    # the encoder takes (K, J, I) arrays as SimpleITK gives them: MONAI's (i, j, k) transposed
    x = torch.cat([data[key].as_tensor() for key in keys]).permute(0, 3, 2, 1)[None].float().contiguous()
    stages["preprocessed"] = time.perf_counter() - STARTED

    weights, biases = heads.marker_weights()
    cox_w, cox_b = heads.cox_weights() if heads.cox is not None else (np.zeros((0, weights.shape[1])), 0.0)
    model = LinearHeadModel(bundle.encoder, np.vstack([weights, np.reshape(cox_w, (-1, weights.shape[1]))]),
                            np.append(biases, [cox_b] if heads.cox is not None else [])).eval()
    with torch.no_grad():
        outputs = model(x)[0].double().numpy()
    logits, risk = outputs[:len(weights)], (float(outputs[-1]) if heads.cox is not None else None)
    names, signed = map_weights(heads, logits, risk)
    cam_model = LinearHeadModel(bundle.encoder, signed, np.zeros(len(signed))).eval()
    cohort = torch.as_tensor(heads.cam_reference) if heads.cam_reference is not None else torch.zeros(())
    cam = ReferencedGradCAM(cam_model, target_layers=f"encoder.net.{heads.cam_layer}", reference=cohort,
                            postprocessing=ScaleIntensity(minv=0.0, maxv=1.0))  # MONAI's default flips it: 1 - map
    stages["model"] = time.perf_counter() - STARTED

    reference_image = sitk.ReadImage(files[reference])
    out.mkdir(parents=True, exist_ok=True)
    spent = {"gradcam_seconds": 0.0, "resample_seconds": 0.0, "write_seconds": 0.0}
    for index, name in enumerate(names):
        started = time.perf_counter()
        volume = cam(x, class_idx=index)[0, 0].detach().numpy()  # upsampled to the grid by MONAI, 0..1
        image = sitk.GetImageFromArray(volume.astype(np.float32))
        image.CopyInformation(grid)
        resampled = time.perf_counter()
        back = sitk.Resample(image, reference_image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        written = time.perf_counter()
        sitk.WriteImage(back, str(out / f"heatmap_{name}.nrrd"), useCompression=True)
        done = time.perf_counter()
        spent["gradcam_seconds"] += resampled - started
        spent["resample_seconds"] += written - resampled
        spent["write_seconds"] += done - written
    stages["maps"] = time.perf_counter() - STARTED
    stages.update(spent)
    result = {"probabilities": {h.key: float(1 / (1 + np.exp(-v))) for h, v in zip(heads.markers, logits)},
              "risk_score": risk, "maps": names, "layer": heads.cam_layer, "stages": stages}
    (out / "predictions.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path, help="BraTS-style case folder (four *-t1n/t1c/t2w/t2f.nii.gz)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the demo bundle)")
    parser.add_argument("--n4-full-res", action="store_true", help="N4 without shrinking (minutes per sequence)")
    args = parser.parse_args()
    if args.bundle is None:
        from neuroradfm.demo import demo_bundle_path

        args.bundle = demo_bundle_path()
    result = run(args.case, args.out, args.bundle, args.n4_full_res)
    print(json.dumps({"seconds": time.perf_counter() - STARTED, **result["stages"]}))


if __name__ == "__main__":
    main()
