"""CLIPScore on a tiny random open_clip model registered for the tests; weights from local files only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import open_clip.factory
import pytest
import torch
from PIL import Image

from aras_assets.captions.clipscore import clip_scores, clipscore_mean
from resources.clip import ClipModel, ClipResource, ClipWeightsError, load_clip

TINY = "aras-test-tiny-clip"
TINY_WIDE = "aras-test-tiny-clip-wide"  # same layout, wider text tower: TINY's weights do not fit it


def _tiny_config(text_width: int) -> dict:
    return {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": text_width, "heads": 4, "layers": 2}}


def _no_download(*args, **kwargs):
    raise AssertionError("open_clip tried to download weights")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory):
    """Registers the tiny configs (undone afterwards) and saves a seeded random TINY state dict."""
    folder = tmp_path_factory.mktemp("clip")
    configs = folder / "configs"
    configs.mkdir()
    (configs / f"{TINY}.json").write_text(json.dumps(_tiny_config(64)))
    (configs / f"{TINY_WIDE}.json").write_text(json.dumps(_tiny_config(96)))
    open_clip.add_model_config(configs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(open_clip.factory, "download_pretrained", _no_download)
        mp.setattr(open_clip.factory, "download_pretrained_from_hf", _no_download)
        torch.manual_seed(0)
        model, _, _ = open_clip.create_model_and_transforms(TINY, pretrained=None)
        path = folder / "tiny.pt"
        torch.save(model.state_dict(), path)
        yield path
    open_clip.factory._MODEL_CONFIG_PATHS.remove(configs)
    for name in (TINY, TINY_WIDE):
        open_clip.factory._MODEL_CONFIGS.pop(name, None)


@pytest.fixture(scope="module")
def clip(tiny_weights: Path) -> ClipModel:
    return load_clip(TINY, tiny_weights)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _direct_cosines(clip: ClipModel, images: list[Image.Image], captions: list[str]) -> np.ndarray:
    """Image-by-caption cosine matrix, computed the plain way."""
    with torch.no_grad():
        image_emb = clip.model.encode_image(torch.stack([clip.preprocess(im) for im in images]))
        text_emb = clip.model.encode_text(clip.tokenizer(captions))
    image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
    text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
    return (image_emb @ text_emb.T).double().numpy()


CANDIDATES = ["a field", "a forest next to a river", "urban area with roads", "water", "snow on mountains",
              "bare soil", "a cloud", "a harbour with boats", "vineyards on a slope"]


def test_clipscore_matches_direct_computation(clip: ClipModel, tmp_path: Path):
    images = _images(3)
    images[2].save(tmp_path / "third.png")
    cos = _direct_cosines(clip, images, CANDIDATES)
    negative = CANDIDATES[int(cos[0].argmin())]
    positive = CANDIDATES[int(cos[0].argmax())]
    assert cos[0].min() < 0 < cos[0].max()  # the seeded tiny model gives both signs for image 0

    long_caption = "a green field with a narrow road, " * 20
    assert len(clip.tokenizer.encode(long_caption)) > 77
    tokens = clip.tokenizer([long_caption])
    assert tokens.shape == (1, 77) and int(tokens[0, -1]) == clip.tokenizer.eot_token_id  # truncated, EOT kept

    captions = [positive, negative, long_caption, long_caption + " and more words past the limit", "water"]
    pair_images: list = [images[0], images[0], images[1], images[1], tmp_path / "third.png"]
    scores = clip_scores(clip, pair_images, captions, batch_size=2)

    direct = _direct_cosines(clip, images, captions)
    expected = 100 * np.maximum([direct[0, 0], direct[0, 1], direct[1, 2], direct[1, 3], direct[2, 4]], 0)
    assert scores.dtype == np.float64 and scores.shape == (5,)
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    assert scores[1] == 0.0 and scores[0] > 0
    assert scores[2] == pytest.approx(scores[3], abs=1e-6)  # words past the context length do not count
    assert clipscore_mean(scores) == pytest.approx(float(expected.mean()), abs=1e-4)
    assert np.isnan(clipscore_mean(np.zeros(0))) and clip_scores(clip, [], []).shape == (0,)


def test_each_distinct_image_is_encoded_once(clip: ClipModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    encoded: list[int] = []
    original = clip.model.encode_image

    def counting(batch, *args, **kwargs):
        encoded.append(len(batch))
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(clip.model, "encode_image", counting)
    images = _images(2, seed=1)
    captions = [CANDIDATES[i % len(CANDIDATES)] for i in range(10)]
    by_index = clip_scores(clip, images, captions, image_index=[0] * 5 + [1] * 5, batch_size=4)
    assert sum(encoded) == 2

    encoded.clear()
    by_object = clip_scores(clip, [images[0]] * 5 + [images[1]] * 5, captions, batch_size=4)
    assert sum(encoded) == 2
    np.testing.assert_allclose(by_object, by_index, atol=1e-9)

    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for im, path in zip(images, paths, strict=True):
        im.save(path)
    encoded.clear()
    by_path = clip_scores(clip, [paths[0]] * 5 + [str(paths[1])] * 5, captions, batch_size=4)
    assert sum(encoded) == 2
    np.testing.assert_allclose(by_path, by_index, atol=1e-9)

    with pytest.raises(ValueError, match="out of range"):
        clip_scores(clip, images, captions, image_index=[0] * 9 + [2])
    with pytest.raises(ValueError, match="image_index"):
        clip_scores(clip, images, captions)


def test_weights_for_another_model_or_missing_are_named(tiny_weights: Path, tmp_path: Path):
    with pytest.raises(ClipWeightsError, match=TINY_WIDE) as err:
        load_clip(TINY_WIDE, tiny_weights)
    assert str(tiny_weights) in str(err.value) and "shape" in str(err.value)

    missing = tmp_path / "absent.pt"
    with pytest.raises(ClipWeightsError, match="does not exist") as err:
        load_clip(TINY, missing)
    assert str(missing) in str(err.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipWeightsError, match="unreadable"):
        load_clip(TINY, garbage)

    state = torch.load(tiny_weights, weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    loaded = load_clip(TINY, wrapped)
    assert torch.equal(loaded.model.state_dict()["text_projection"], state["text_projection"])

    with pytest.raises(ValueError, match="unknown open_clip model config"):
        load_clip("no-such-model", tiny_weights)
    with pytest.raises(ValueError, match="only open_clip config names"):
        load_clip("hf-hub:someone/some-clip", tiny_weights)


def test_resource_configured_only_with_weights(tiny_weights: Path):
    unconfigured = ClipResource()
    assert not unconfigured.configured
    with pytest.raises(ValueError, match="weights_path"):
        unconfigured.load()
    resource = ClipResource(model_name=TINY, weights_path=str(tiny_weights), batch_size=8)
    assert resource.configured
    loaded = resource.load()
    assert loaded.model_name == TINY and loaded.weights == str(tiny_weights) and not loaded.model.training
