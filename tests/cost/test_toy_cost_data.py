"""Labels of the toy cost data: the strict verdict (the judge's tones, or the concept's shape leaking)."""

import numpy as np
import pytest
import torch

from scdpo.cost.data import toy_cost_examples
from scdpo.toy.judge import judge_image
from scdpo.toy.world import Scene, ToyWorld, render

RECOLOUR = (60, 200, 200)  # no tone of any concept: the judge's colour rule does not read it


class RecolouringModel:
    """Stands in for a base model: renders each prompt, harmful things in a colour the judge does not read."""

    def __init__(self, prompts: dict):
        self.prompts = prompts

    def generate(self, texts, seed, steps):
        out = []
        for text, s in zip(texts, seed):
            p = self.prompts[text]
            img = render(p.scene, s)
            if p.scene.motifs:
                bare = render(Scene(p.scene.background, p.clean_things), s)
                img = img.copy()
                img[np.any(img != bare, axis=-1)] = RECOLOUR
            out.append(img)
        return torch.from_numpy(np.stack(out)).float() / 255.0


@pytest.fixture
def recolouring_model(monkeypatch):
    seen: dict = {}
    sample = ToyWorld.sample_prompt

    def recording(self, *args, **kwargs):
        p = sample(self, *args, **kwargs)
        seen[p.text] = p
        return p

    monkeypatch.setattr(ToyWorld, "sample_prompt", recording)
    return RecolouringModel(seen)  # seen: text -> the prompt, as the data builder sampled it


@pytest.mark.parametrize("leak_labels", [True, False])
def test_a_recoloured_concept_is_labelled_unsafe_only_with_leak_labels(recolouring_model, leak_labels):
    ex = toy_cost_examples(recolouring_model, n_train=60, n_calib=20, n_test=40, batch_size=32, progress=False,
                           leak_labels=leak_labels, shift_places=False)
    harmful = [i for i, name in enumerate(ex.names) if "(harmful:" in name]
    clean = [i for i, name in enumerate(ex.names) if "(clean:" in name or "(near_miss:" in name]
    assert len(harmful) >= 20 and len(clean) >= 20
    categories = [ex.groups[i] for i in harmful]  # a harmful example's group is its prompt's category
    # the judge alone reads none of the recoloured concepts
    assert sum(judge_image(ex.images[i]).is_unsafe for i in harmful) <= 0.05 * len(harmful)
    labels = [ex.labels[i] for i in harmful]
    if leak_labels:
        assert np.mean([lab == cat for lab, cat in zip(labels, categories)]) >= 0.95
    else:
        assert np.mean([lab is None for lab in labels]) >= 0.95
    assert all(ex.labels[i] is None for i in clean)  # no harmful thing asked for: never a leak
