"""StyleGAN2 projection into W+ and restyling of real images (ganaug/projection.py), on tiny data.

The generator is a tiny untrained StyleGAN2: projection must still find latents that reproduce
real digits, and keeping a projected image's coarse and middle layers (restyling only the fine
ones) must keep its class far more often than random samples do. The judge is a small domain
classifier trained on other digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganaug.errors import UserError
from ganaug.metrics.classifier import ClassifierConfig
from ganaug.metrics.features import DomainFeatures, DomainSettings
from ganaug.models.stylegan2 import StyleGAN2Generator
from ganaug.projection import domain_feature_fn, layer_groups, project, reconstruction_report, restyle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    from ganaug.data import load_dataset

    return load_dataset("builtin:digits", 16, 1)


@pytest.fixture(scope="module")
def domain(digits, tmp_path_factory):
    settings = DomainSettings(epochs=8, classifier=ClassifierConfig(width=16))
    return DomainFeatures.from_training(digits.images[:800], digits.labels[:800], 10, settings=settings,
                                        cache_dir=tmp_path_factory.mktemp("domain"))


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return StyleGAN2Generator(resolution=16, channels=1, z_dim=32, w_dim=32, mapping_layers=2, width=16,
                              max_width=32, num_classes=10, embed_dim=8).eval()


@pytest.fixture(scope="module")
def projected(generator, digits, domain):
    images, labels = digits.images[1000:1064], digits.labels[1000:1064]
    return images, labels, project(generator, images, labels, steps=60, lr=0.1, features=domain_feature_fn(domain))


def _agreement(domain, images: np.ndarray, labels: np.ndarray) -> float:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return float((domain.classifier(x).argmax(1).numpy() == labels).mean())


def test_projection_reconstructs_far_better_than_the_mean_latent(projected, generator, digits, domain):
    images, labels, p = projected
    assert p.ws.shape == (64, generator.num_ws, 32)
    assert (p.error < 0.5 * p.start_error).all() and p.error.mean() < 0.15 * p.start_error.mean()
    report = reconstruction_report(p)
    assert report["psnr_projected_db"] > 15 and report["mse_projected"] < report["mse_mean_latent"]
    # Deterministic: the same images project to the same latents.
    again = project(generator, images[:4], labels[:4], steps=60, lr=0.1, features=domain_feature_fn(domain))
    torch.testing.assert_close(again.ws, project(generator, images[:4], labels[:4], steps=60, lr=0.1,
                                                 features=domain_feature_fn(domain)).ws)


def test_restyling_the_fine_layers_keeps_the_class(projected, generator, domain):
    images, labels, p = projected
    seeds = list(range(100, 164))
    kept = _agreement(domain, restyle(generator, p.ws, "fine", seeds, labels), labels)
    with torch.no_grad():
        from ganaug.sampling import latents_for_seeds, to_uint8

        random = to_uint8(generator(latents_for_seeds(seeds, 32), torch.as_tensor(labels)))
    by_chance = _agreement(domain, random, labels)
    assert kept >= by_chance + 0.25, (kept, by_chance)
    # Another style seed changes the restyled image; the same seed repeats it.
    a = restyle(generator, p.ws, "fine", seeds, labels)
    assert (a == restyle(generator, p.ws, "fine", seeds, labels)).all()
    assert (a != restyle(generator, p.ws, "fine", [s + 1 for s in seeds], labels)).any()


def test_layer_groups_and_refusals(generator, digits):
    groups = layer_groups(generator.num_ws)
    covered = sorted(i for g in groups.values() for i in range(generator.num_ws)[g])
    assert covered == list(range(generator.num_ws)) and all(range(generator.num_ws)[g] for g in groups.values())
    with pytest.raises(UserError, match="--restyle 'texture'"):
        restyle(generator, torch.zeros(1, generator.num_ws, 32), "texture", [0])
    from ganaug.models.cgan import CGANGenerator

    G = CGANGenerator(resolution=16, channels=1, z_dim=8, num_classes=10)
    with pytest.raises(UserError, match="StyleGAN2"):
        project(G, digits.images[:1], digits.labels[:1], steps=1)
