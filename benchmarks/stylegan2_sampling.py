"""StyleGAN2 sampling throughput: one image per forward (the old path) vs fixed-size chunks.

    python benchmarks/stylegan2_sampling.py [--images 256] [--resolution 32] [--width 32] [--threads 2]

Prints one JSON object with images/s of
- before: what ganaug did until issue 14: G_ema in eval mode ran sample by sample (one forward
  of batch 1 per image) to stay batch-invariant; measured here by calling G one image at a time,
- after: `Sampler.generate`, one forward per fixed chunk of `sampling.CHUNK` rows (padded), with
  the default inference conv (`stylegan2.FUSED_INFERENCE`); the other form is reported too,
and their ratio (target >= 5x). Both produce the same images up to float rounding (the max
abs difference is reported: the kernels differ, so bitwise equality is not promised across
batch shapes; it is within a chunk, see tests/test_stylegan2.py). A freshly initialised
conditional model: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--max-width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from ganaug.config import ModelConfig
    from ganaug.models import stylegan2
    from ganaug.models.registry import DataInfo, get_family
    from ganaug.sampling import CHUNK, Sampler, latents_for_seeds, to_uint8

    torch.set_num_threads(args.threads)
    fam = get_family("stylegan2")
    data = DataInfo(args.resolution, args.channels, 10, [str(i) for i in range(10)])
    kwargs = fam.generator_kwargs(ModelConfig(family="stylegan2", width=args.width, max_width=args.max_width), data)
    torch.manual_seed(0)
    G = fam.build_generator(kwargs)
    meta = {"kind": "noise", "family": "stylegan2", "num_classes": 10, "class_names": data.class_names,
            "resolution": args.resolution, "channels": args.channels}
    sampler = Sampler(G, meta, device=args.device)
    fused_default = stylegan2.FUSED_INFERENCE
    auto_fused = sampler.device.type == "cuda" if fused_default is None else fused_default
    seeds = list(range(args.images))
    labels = [s % 10 for s in seeds]

    def per_image():  # the old eval path: fused modulated convs, one image per forward
        z = latents_for_seeds(seeds, G.z_dim)
        y = torch.tensor(labels)
        stylegan2.FUSED_INFERENCE = True
        try:
            with torch.inference_mode():
                return to_uint8(torch.cat([sampler.G(z[i:i + 1], y[i:i + 1]) for i in range(len(seeds))]))
        finally:
            stylegan2.FUSED_INFERENCE = fused_default

    def batched(fused: bool):
        stylegan2.FUSED_INFERENCE = fused
        try:
            return sampler.generate(seeds, labels)
        finally:
            stylegan2.FUSED_INFERENCE = fused_default

    sampler.generate(seeds[:CHUNK], labels[:CHUNK])  # warm-up
    out = {}
    runs = (("before", per_image), ("after", lambda: batched(fused_default)),
            ("after_other_conv", lambda: batched(not auto_fused)), ("before_again", per_image))
    for name, fn in runs:
        t0 = time.perf_counter()
        imgs = fn()
        out[name] = len(seeds) / (time.perf_counter() - t0)
        out[f"_{name}"] = imgs
    before = (out["before"] + out["before_again"]) / 2  # bracketing: load on the machine drifts
    diff = int(abs(out["_before"].astype(int) - out["_after"].astype(int)).max())
    print(json.dumps({
        "benchmark": "stylegan2_sampling", "images": args.images, "resolution": args.resolution,
        "channels": args.channels, "width": args.width, "threads": args.threads, "chunk": CHUNK,
        "before_images_per_s": round(before, 2), "after_images_per_s": round(out["after"], 2),
        "ratio": round(out["after"] / before, 2), "max_abs_uint8_diff": diff,
        # The same chunked path with the other modulated-conv form (fused grouped conv vs shared conv).
        "inference_fused": auto_fused,
        "other_conv_images_per_s": round(out["after_other_conv"], 2),
    }))


if __name__ == "__main__":
    main()
