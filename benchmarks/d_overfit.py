"""Does D overfit? Its logits on the run's training rows, its held-back rows and G's samples.

    .venv/bin/python benchmarks/d_overfit.py --checkpoint RUN_OR_STEP_DIR

ADA's controller reads r_t = E[sign(D(real))] on the training rows only, and raises p when it
passes `training.ada_target` (0.6, tuned in the paper for the logistic loss). This check asks
the question r_t stands in for, with the `data.holdout` rows the run never trained on (ADA's
r_v, Karras et al. 2020, eq. 1):

    r_v = (E[D(train)] - E[D(held back)]) / (E[D(train)] - E[D(fake)])

0 when D scores unseen real images like the ones it trained on, 1 when it scores them like
fakes. The rows are the run's own `data.spec` at its resolution, split exactly as training
split them (`holdout_split`, seed 0); fakes are G_ema's samples with the held-back rows'
labels. D runs in batches of `training.batch_size` (its minibatch-stddev groups as in
training), with no augmentation: p is the controller's output, not its input. One JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ganaug import checkpoint
from ganaug.data import load_dataset
from ganaug.models.registry import get_family
from ganaug.sampling import from_uint8
from ganaug.training.quality import holdout_split


def d_logits(D, images: torch.Tensor, labels: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x, y = images[i:i + batch], labels[i:i + batch]
            logits = D(x, y, mbstd_chunk=len(x))
            out.append((logits[0] if isinstance(logits, tuple) else logits).float().flatten())
    return torch.cat(out)


def summary(logits: torch.Tensor) -> dict:
    return {"rows": len(logits), "mean_logit": round(logits.mean().item(), 4),
            "sign_mean": round(logits.sign().mean().item(), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run (its best or latest checkpoint) or a step folder")
    p.add_argument("--seed", type=int, default=0, help="latent seed of the fakes")
    args = p.parse_args()
    torch.manual_seed(args.seed)

    uri = checkpoint.resolve_checkpoint(args.checkpoint)
    meta = checkpoint.load_meta(uri)
    if meta.get("kind") != "noise":
        raise SystemExit(f"{uri}: a {meta.get('family')} checkpoint; this check is for the noise families")
    cfg = meta["config"]
    holdout = float(cfg["data"].get("holdout", 0.0))
    if holdout <= 0:
        raise SystemExit(f"{uri}: the run held no rows back (data.holdout = 0), so nothing is unseen")
    D = get_family(meta["family"]).build_discriminator(meta["discriminator_kwargs"])
    D.load_state_dict(checkpoint.load_weights(uri, "discriminator", meta))
    D.eval()
    G, _ = checkpoint.build_generator(uri)

    data = load_dataset(cfg["data"]["spec"], meta["resolution"], meta["channels"])
    kept, held = holdout_split(data.labels, holdout, 0)
    # Training draws its batches at random; minibatch stddev makes D's logit depend on who shares
    # the batch, so sorted rows (one class per batch) would be scored unlike training scored them.
    order = np.random.default_rng(args.seed)
    kept, held = order.permutation(kept), order.permutation(held)
    images, labels = from_uint8(data.images), torch.as_tensor(data.labels, dtype=torch.long)
    batch = int(cfg["training"]["batch_size"])
    with torch.no_grad():
        fakes = G(torch.randn(len(held), G.z_dim), labels[held])
    train_l = d_logits(D, images[kept], labels[kept], batch)
    held_l = d_logits(D, images[held], labels[held], batch)
    fake_l = d_logits(D, fakes, labels[held], batch)
    gap = train_l.mean() - fake_l.mean()
    r_v = ((train_l.mean() - held_l.mean()) / gap).item() if gap.abs() > 1e-8 else float("nan")
    print(json.dumps({
        "benchmark": "d_overfit", "checkpoint": uri, "step": meta.get("step"), "family": meta["family"],
        "loss": cfg["training"]["loss"], "augment": cfg["training"]["augment"],
        "ada_target": cfg["training"].get("ada_target"), "data": cfg["data"]["spec"], "holdout": holdout,
        # train.sign_mean is r_t without augmentation
        "train": summary(train_l), "held_back": summary(held_l), "fake": summary(fake_l), "r_v": round(r_v, 4),
    }))


if __name__ == "__main__":
    main()
