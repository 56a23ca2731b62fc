"""Feature extractors of the evaluation: plumbing checked with tiny weight files in the official layouts.

No real checkpoint is used (weights are never downloaded): a tiny TorchScript module with StyleGAN-V's I3D call
signature, tiny random transformers CLIP and ViT models saved with ``save_pretrained``, a small LAION head state
dict, and a fake Q-Align model and tokenizer. The pose estimator runs on views of a textured scene rendered with
d4s's own renderer, whose cameras are known.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from d4s.eval.extractors import EXTRACTOR_NAMES, WEIGHTS, MissingWeights, load_extractor
from d4s.eval.extractors._preprocess import CLIP_MEAN, IMAGENET_MEAN, IMAGENET_STD, clip_pixels
from d4s.eval.extractors.aesthetic import AestheticHead
from d4s.eval.extractors.camera import estimate_poses
from d4s.eval.extractors.clip import CLIP, clip_score
from d4s.eval.extractors.dino import DINO
from d4s.eval.extractors.i3d import I3D
from d4s.eval.extractors.mast3r import Mast3rMatcher
from d4s.eval.extractors.qalign import IMAGE_TOKEN_INDEX, PROMPT, QAlign, rating_token_ids
from d4s.eval.extractors.qalign import main as qalign_worker
from d4s.eval.metrics import qalign_score
from tests.helpers import textured_room_field

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")  # the I3D test file


def frames(n: int, height: int, width: int, seed: int = 0) -> Tensor:
    """``[n, 3, height, width]`` smooth random images in ``[0, 1]``."""
    coarse = torch.rand(n, 3, 5, 7, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", EXTRACTOR_NAMES)
def test_registry_names_the_missing_file_and_config_key(name, tmp_path):
    with pytest.raises(MissingWeights) as none_given:
        load_extractor(name, {})
    assert isinstance(none_given.value, FileNotFoundError)
    assert none_given.value.name == name and none_given.value.path is None and none_given.value.metric
    assert "no path configured" in str(none_given.value)  # the protocol's report quotes this
    missing = tmp_path / "absent.pt"
    with pytest.raises(MissingWeights) as not_found:
        load_extractor(name, {name: str(missing)})
    message = str(not_found.value)
    assert "\n" not in message
    assert str(missing) in message and f"set weights.{name} in" in message and "configs/eval.yaml" in message
    assert WEIGHTS[name].expected in message and WEIGHTS[name].source in message
    assert not_found.value.path == str(missing)


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="name: unknown extractor 'inception'"):
        load_extractor("inception", {"inception": "x"})


# ---------------------------------------------------------------------------------------------------------------- I3D


class TinyI3D(nn.Module):
    """StyleGAN-V's I3D call signature; its 400 features report what it was given (mean, range, shape, flags, and
    whether it was uint8)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 388)

    def forward(self, x: Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False) -> Tensor:
        b = x.shape[0]
        flat = x.float().reshape(b, 3, -1)
        info = [flat.mean(-1), flat.amin(dim=(1, 2))[:, None], flat.amax(dim=(1, 2))[:, None]]
        shape = torch.tensor([x.shape[2], x.shape[3], x.shape[4]], dtype=torch.float32).expand(b, 3)
        flags = torch.tensor([float(rescale), float(resize), float(return_features)]).expand(b, 3)
        uint8 = torch.full((b, 1), float(x.dtype == torch.uint8))
        return torch.cat(info + [shape, flags, uint8, self.proj(flat.mean(-1))], dim=1)


class NoFlags(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


def test_i3d_features_follow_the_stylegan_v_call(i3d_file):
    i3d = load_extractor("i3d", {"i3d": str(i3d_file)})
    assert isinstance(i3d, I3D)
    colour = torch.tensor([51, 128, 230]) / 255.0
    videos = colour.view(1, 1, 3, 1, 1).expand(2, 10, 3, 48, 80).clone()  # non-square: the network resizes it
    features = i3d.features(videos)
    assert features.shape == (2, 400) and features.dtype == torch.float32
    torch.testing.assert_close(features[:, :3], torch.tensor([51.0, 128.0, 230.0]).expand(2, 3))  # uint8 values
    torch.testing.assert_close(features[:, 5:8], torch.tensor([10.0, 48.0, 80.0]).expand(2, 3))  # T, H, W as given
    torch.testing.assert_close(features[:, 8:12], torch.ones(2, 4))  # rescale, resize, return_features; uint8
    torch.testing.assert_close(i3d.features(videos), features)  # deterministic


def test_i3d_input_is_stylegan_v_uint8_of_the_whole_non_square_video():
    """StyleGAN-V (metric_utils.compute_feature_stats_for_generator): ``(img * 127.5 + 128).clamp(0, 255)`` as uint8
    from ``[-1, 1]`` images, permuted to ``[C, T, H, W]``; for frames decoded from uint8 files that is the file's
    own values."""
    stored = torch.randint(0, 256, (4, 3, 36, 60), generator=torch.Generator().manual_seed(0))
    video = stored / 255.0
    expected = np.clip(np.floor((video.double().numpy() * 2 - 1) * 127.5 + 128), 0, 255).astype(np.uint8)
    given = I3D.preprocess(video)
    assert given.dtype == torch.uint8 and given.shape == (3, 4, 36, 60)
    assert np.array_equal(given.numpy(), expected.transpose(1, 0, 2, 3))
    assert torch.equal(given, stored.to(torch.uint8).permute(1, 0, 2, 3))


def test_i3d_rejects_short_clips_and_bad_videos(i3d_file):
    i3d = I3D.load(i3d_file)
    with pytest.raises(ValueError, match="at least 10 frames"):
        i3d.features(torch.rand(1, 9, 3, 32, 32))
    with pytest.raises(ValueError, match="videos"):
        i3d.features(torch.rand(1, 12, 32, 32, 3))


def test_i3d_wrong_files_are_value_errors(tmp_path):
    not_script = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(3)}, not_script)
    with pytest.raises(ValueError, match=str(not_script)):
        I3D.load(not_script)
    no_flags = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(NoFlags()), str(no_flags))
    with pytest.raises(ValueError, match="rescale"):
        I3D.load(no_flags)


# --------------------------------------------------------------------------------------------------------------- CLIP


def test_clip_features_are_normalised_and_deterministic(clip_dir):
    clip = load_extractor("clip_b32", {"clip_b32": str(clip_dir)})
    images = frames(3, 40, 56)
    image_feats = clip.image_features(images)
    assert image_feats.shape == (3, 8) and image_feats.dtype == torch.float32
    torch.testing.assert_close(image_feats.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(clip.image_features(images), image_feats)
    text_feats = clip.text_features(["a red room", "xyz"])
    assert text_feats.shape == (2, 8)
    torch.testing.assert_close(text_feats.norm(dim=-1), torch.ones(2))
    long_prompt = clip.text_features(["abc " * 40])  # truncated to the model's 16 positions
    assert long_prompt.shape == (1, 8)
    with pytest.raises(ValueError, match="texts"):
        clip.text_features("a red room")


def test_clip_pixels_match_the_transformers_image_processor():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = (frames(2, 40, 60) * 255).round().to(torch.uint8)
    expected = processor(images=[image.permute(1, 2, 0).numpy() for image in images], return_tensors="pt")
    ours = clip_pixels(images.float() / 255, 32)
    torch.testing.assert_close(ours, expected["pixel_values"], atol=0.05, rtol=0)  # PIL vs torch bicubic
    square = images[..., :32, :32]
    expected = processor(images=[image.permute(1, 2, 0).numpy() for image in square], return_tensors="pt")
    torch.testing.assert_close(clip_pixels(square.float() / 255, 32), expected["pixel_values"])


def test_clip_score_scaling_and_clamping():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    text = torch.tensor([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    torch.testing.assert_close(clip_score(image, text), torch.tensor([100.0, 0.0, 100 / 2**0.5]))
    torch.testing.assert_close(clip_score(image, text, scale=1.0, clamp=False), torch.tensor([1.0, -1.0, 2**-0.5]))
    torch.testing.assert_close(clip_score(image, text[:1], scale=2.5), torch.tensor([2.5, 0.0, 2.5 / 2**0.5]))
    with pytest.raises(ValueError, match="text_feats"):
        clip_score(image, text[:2])


def test_clip_wrong_folders_are_value_errors(clip_dir, dino_dir, tmp_path):
    import shutil

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, no_tokenizer / name)
    with pytest.raises(ValueError, match="no tokenizer files"):
        CLIP.load(no_tokenizer)
    with pytest.raises(ValueError, match=str(dino_dir)):
        CLIP.load(dino_dir, name="clip_l14")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match=str(no_weights)):
        CLIP.load(no_weights)
    with pytest.raises(MissingWeights, match="set weights.clip_l14 in"):
        CLIP.load(None, name="clip_l14")


# --------------------------------------------------------------------------------------------------------------- DINO


def test_dino_cls_features_with_imagenet_normalisation(dino_dir):
    assert isinstance(load_extractor("dino", {"dino": str(dino_dir)}), DINO)
    dino = DINO.load(dino_dir, resolution=32)
    images = frames(3, 32, 32)
    features = dino.features(images)
    assert features.shape == (3, 16) and features.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = dino.model(pixel_values=(images - mean) / std).last_hidden_state[:, 0]
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(dino.features(images), features)
    wide = dino.features(frames(2, 48, 80))  # short side to 32, position embeddings interpolated
    assert wide.shape == (2, 16) and torch.isfinite(wide).all()


def test_dino_weights_of_the_wrong_shape_are_value_errors(dino_dir, tmp_path):
    import shutil

    folder = shutil.copytree(dino_dir, tmp_path / "dino")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 24}))
    with pytest.raises(ValueError, match=str(folder)):
        DINO.load(folder)


def test_dino_wrong_folders_are_value_errors(clip_dir, tmp_path):
    with pytest.raises(ValueError, match="model_type 'clip'"):
        DINO.load(clip_dir)
    with pytest.raises(ValueError, match="config.json"):
        DINO.load(tmp_path)
    not_a_folder = tmp_path / "weights.bin"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a folder"):
        DINO.load(not_a_folder)


# ---------------------------------------------------------------------------------------------- CLIP-Aesthetic (LAION)


def _laion_mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """The improved-aesthetic-predictor layout: Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear."""
    a, b, c, d, e = widths
    return nn.Sequential(
        nn.Linear(a, b), nn.Dropout(0.2), nn.Linear(b, c), nn.Dropout(0.2), nn.Linear(c, d), nn.Dropout(0.1),
        nn.Linear(d, e), nn.Linear(e, 1),
    )  # fmt: skip


def test_aesthetic_head_runs_the_laion_mlp_on_normalised_features(tmp_path):
    torch.manual_seed(0)
    mlp = _laion_mlp((12, 10, 8, 6, 4)).eval()
    state = {f"layers.{key}": value for key, value in mlp.state_dict().items()}
    assert sorted({key.split(".")[1] for key in state}) == ["0", "2", "4", "6", "7"]
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, path)
    head = load_extractor("aesthetic", {"aesthetic": str(path)})
    features = torch.randn(5, 12)
    scores = head.score(features)
    assert scores.shape == (5,)
    with torch.no_grad():
        torch.testing.assert_close(scores, mlp(F.normalize(features, dim=-1))[:, 0])
    torch.testing.assert_close(head.score(3.0 * features), scores)  # the embedding is L2-normalised first
    with pytest.raises(ValueError, match="clip_image_features"):
        head.score(torch.randn(5, 13))


def test_aesthetic_head_runs_the_relu_variant_with_its_relus(tmp_path):
    """``ava+logos-l14-reluMSE.pth``'s MLP, as avaclipmlp_inf_wds-relu.py builds it: a ReLU after each hidden layer."""
    torch.manual_seed(0)
    a, b, c, d, e = 12, 10, 8, 6, 4
    mlp = nn.Sequential(
        nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.2), nn.Linear(b, c), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(c, d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, e), nn.ReLU(), nn.Linear(e, 1),
    ).eval()  # fmt: skip
    path = tmp_path / "ava+logos-l14-reluMSE.pth"
    torch.save({f"layers.{key}": value for key, value in mlp.state_dict().items()}, path)
    features = torch.randn(16, 12)
    with torch.no_grad():
        expected = mlp(F.normalize(features, dim=-1))[:, 0]
        without_relus = _laion_mlp((a, b, c, d, e))
        without_relus.load_state_dict(dict(zip(without_relus.state_dict(), mlp.state_dict().values())))
        assert not torch.allclose(without_relus.eval()(F.normalize(features, dim=-1))[:, 0], expected)
    torch.testing.assert_close(AestheticHead.load(path).score(features), expected)


def test_aesthetic_head_reads_the_v1_linear_head(tmp_path):
    linear = nn.Linear(12, 1)
    path = tmp_path / "sa_0_4_vit_l_14_linear.pth"
    torch.save(linear.state_dict(), path)
    features = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            AestheticHead.load(path).score(features), linear(F.normalize(features, dim=-1))[:, 0]
        )


@pytest.mark.parametrize(
    "state, match",
    [
        ({"fc.weight": torch.zeros(1, 4), "fc.bias": torch.zeros(1)}, "unexpected key"),
        ({"layers.0.weight": torch.zeros(3, 4), "layers.0.bias": torch.zeros(3)}, "one output"),
        ({"layers.0.weight": torch.zeros(3, 4), "layers.0.bias": torch.zeros(3),
          "layers.2.weight": torch.zeros(1, 5), "layers.2.bias": torch.zeros(1)}, "chain"),
        ({"layers.0.weight": torch.zeros(1, 4)}, "weight and a bias"),
        ({"layers.0.weight": torch.zeros(3, 4), "layers.0.bias": torch.zeros(3),
          "layers.5.weight": torch.zeros(1, 3), "layers.5.bias": torch.zeros(1)}, "neither LAION layout"),
    ],
)  # fmt: skip
def test_aesthetic_wrong_state_dicts_are_value_errors(tmp_path, state, match):
    path = tmp_path / "head.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=match) as error:
        AestheticHead.load(path)
    assert str(path) in str(error.value)


def test_aesthetic_non_torch_file_is_a_value_error(tmp_path):
    path = tmp_path / "head.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=str(path)):
        AestheticHead.load(path)


# ------------------------------------------------------------------------------------------------------------ Q-Align


class WordTokenizer:
    """A whitespace tokenizer with the two methods Q-Align uses; ``sentencepiece`` marks word starts with "▁", as a
    LLaMA tokenizer does; words in ``split`` become two tokens."""

    bos_token_id = 1

    def __init__(self, sentencepiece: bool = False, split: tuple[str, ...] = ()):
        self.sentencepiece, self.split = sentencepiece, split
        self.vocab = {"<unk>": 0, "<s>": 1}

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        pieces = []
        for word in text.split():
            word = "▁" + word if self.sentencepiece else word
            pieces += [word[:2], word[2:]] if word.strip("▁") in self.split else [word]
        return ([self.bos_token_id] if add_special_tokens else []) + [self._id(piece) for piece in pieces]

    def decode(self, ids: list[int]) -> str:
        inverse = {i: piece for piece, i in self.vocab.items()}
        return " ".join(inverse[i] for i in ids).replace("▁", " ")


class FakeOwl(nn.Module):
    """Stands in for mPLUG-Owl2: next-token logits over a 64-word vocabulary that depend on the image."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-2.0, 2.0, 64))
        self.calls = []

    def forward(self, input_ids: Tensor, images: Tensor) -> dict:
        self.calls.append((input_ids.clone(), images.clone()))
        brightness = images.mean(dim=(1, 2, 3))
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 64)
        logits[:, -1] = torch.sin(brightness[:, None] * self.scale[None] * 7.0)
        return {"logits": logits}


def test_qalign_reads_the_rating_word_logits():
    tokenizer, model = WordTokenizer(), FakeOwl()
    qalign = QAlign(model, tokenizer, image_size=16)
    words = ("excellent", "good", "fair", "poor", "bad")
    assert qalign.rating_ids == [tokenizer.vocab[word] for word in words]
    images = frames(3, 12, 20)
    scores = qalign.score(images)
    assert scores.shape == (3,) and bool(((scores >= 1) & (scores <= 5)).all())
    input_ids, pixels = model.calls[-1]
    assert pixels.shape == (3, 3, 16, 16)
    assert input_ids.shape[0] == 3 and input_ids[0, 0] == tokenizer.bos_token_id
    assert int((input_ids[0] == IMAGE_TOKEN_INDEX).sum()) == 1
    prompt_words = [tokenizer.decode([int(i)]) for i in input_ids[0, 1:] if i != IMAGE_TOKEN_INDEX]
    assert " ".join(prompt_words) == " ".join(PROMPT.replace("<|image|>", "").split())
    logits = model(input_ids, pixels)["logits"][:, -1, [tokenizer.vocab[word] for word in words]]
    torch.testing.assert_close(scores, qalign_score(logits))
    torch.testing.assert_close(qalign.score(images), scores)


def test_qalign_pads_frames_to_a_square_with_the_mean_colour():
    qalign = QAlign(FakeOwl(), WordTokenizer(), image_size=16)
    pixels = qalign.pixels(torch.ones(1, 3, 8, 16))  # a white strip in the middle, mean colour above and below
    fill = (torch.tensor([int(m * 255) / 255 for m in CLIP_MEAN]) - torch.tensor(CLIP_MEAN)) / torch.tensor(qalign.std)
    torch.testing.assert_close(pixels[0, :, 0, 0], fill, atol=1e-3, rtol=0)
    torch.testing.assert_close(pixels[0, :, 8, 8], (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(qalign.std))


def test_qalign_rating_words_with_sentencepiece_and_split_words():
    tokenizer = WordTokenizer(sentencepiece=True)
    words = ("excellent", "good", "fair", "poor", "bad")
    assert rating_token_ids(tokenizer) == [tokenizer.vocab["▁" + word] for word in words]
    with pytest.raises(ValueError, match="'excellent' as one token .* 2 extra"):
        rating_token_ids(WordTokenizer(split=("excellent",)))


def test_qalign_load_errors(tmp_path):
    with pytest.raises(MissingWeights, match="set weights.qalign in"):
        QAlign.load(None)
    with pytest.raises(ValueError, match="no config.json"):
        QAlign.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # one-align's remote code cannot import under transformers 5
    with pytest.raises(ValueError, match=r"transformers 4\.3x .* set weights\.qalign_python"):
        QAlign.load(tmp_path)


FAKE_WORKER = """
import sys
from pathlib import Path
import numpy as np
import d4s  # this checkout is on the worker's PYTHONPATH
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))  # -m <module> --model <folder> --device <device>
assert args["-m"] == "d4s.eval.extractors.qalign" and args["--model"].endswith("one-align"), args
if "fail" in args["--model"]:
    sys.exit("NameError: name 'Cache' is not defined")  # what one-align's remote code raises under transformers 5
loads = Path(args["--model"]) / "loads"  # the model is loaded once per worker
loads.write_text(str(int(loads.read_text()) + 1 if loads.exists() else 1))
for line in sys.stdin:
    given, returned = line.rstrip("\\n").split("\\t")
    frames = np.load(given)
    np.save(returned, frames.mean(axis=(1, 2, 3))[:, None] * np.arange(1.0, 6.0))  # logits [N, 5]
    print("ok", flush=True)
"""


def fake_python(folder: Path) -> Path:
    """An executable standing in for another environment's interpreter: it runs FAKE_WORKER with this Python."""
    (folder / "worker.py").write_text(FAKE_WORKER)
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "worker.py"}" "$@"\n')
    python.chmod(0o755)
    return python


def test_the_qalign_worker_loads_once_and_answers_each_line(tmp_path, monkeypatch, capsys):
    """The worker side (``python -m d4s.eval.extractors.qalign``) with a stand-in scorer: one load, one ``ok`` and one
    logits file per request line."""
    loads = []

    class Scorer:
        def rating_logits(self, frames):
            return frames.mean((1, 2, 3))[:, None] * torch.arange(1.0, 6.0)

    monkeypatch.setattr(QAlign, "load", classmethod(lambda cls, *args, **kwargs: loads.append(args) or Scorer()))
    requests = []
    for index in range(2):
        frames = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(index))
        np.save(tmp_path / f"in{index}.npy", frames.numpy())
        requests.append(f"{tmp_path / f'in{index}.npy'}\t{tmp_path / f'out{index}.npy'}\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(requests)))
    assert qalign_worker(["--model", str(tmp_path)]) == 0
    assert len(loads) == 1 and capsys.readouterr().out.split() == ["ok", "ok"]
    for index in range(2):
        frames = torch.from_numpy(np.load(tmp_path / f"in{index}.npy"))
        expected = frames.mean((1, 2, 3))[:, None] * torch.arange(1.0, 6.0)
        torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / f"out{index}.npy")), expected)


def test_qalign_in_its_own_environment_runs_as_a_subprocess(tmp_path):
    python, model = fake_python(tmp_path), tmp_path / "one-align"
    model.mkdir()
    qalign = load_extractor("qalign", {"qalign": str(model), "qalign_python": str(python)})
    for seed in range(2):  # two calls, one worker: the model loads once
        frames = torch.rand(3, 3, 8, 10, generator=torch.Generator().manual_seed(seed))
        logits = frames.mean((1, 2, 3))[:, None].double() * torch.arange(1.0, 6.0, dtype=torch.float64)
        torch.testing.assert_close(qalign.score(frames), qalign_score(logits))
    assert (model / "loads").read_text() == "1"
    broken = tmp_path / "fail-one-align"
    broken.mkdir()
    failing = load_extractor("qalign", {"qalign": str(broken), "qalign_python": str(python)})
    for _ in range(2):  # the failure is remembered: no second worker
        with pytest.raises(RuntimeError, match=r"^Q-Align in .*python: NameError: name 'Cache' is not defined$"):
            failing.score(frames)
    with pytest.raises(FileNotFoundError, match="weights.qalign_python: .*nope is not an executable Python"):
        load_extractor("qalign", {"qalign": str(model), "qalign_python": str(tmp_path / "nope")})


# ------------------------------------------------------------------------------------------------------------- MASt3R


@pytest.mark.parametrize(
    ("size", "resized", "method", "box"),
    [  # dust3r's load_images(size=512) worked out by hand: resize the long side to 512, crop to multiples of 16
        ((90, 170), (512, 271), Image.Resampling.BICUBIC, (0, 7, 512, 263)),  # enlarged; 271 rows -> 256
        ((64, 64), (512, 512), Image.Resampling.BICUBIC, (0, 64, 512, 448)),  # a square becomes 4:3
        ((600, 1000), (512, 307), Image.Resampling.LANCZOS, (0, 1, 512, 305)),  # shrunk; 307 rows -> 304
    ],
)
def test_mast3r_views_are_prepared_as_dust3r_load_images(size, resized, method, box):
    stored = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    view = Mast3rMatcher._view(stored.float() / 255.0, 1)
    picture = Image.fromarray(stored.permute(1, 2, 0).numpy()).resize(resized, method).crop(box)
    expected = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    torch.testing.assert_close(view["img"], expected)
    assert view["true_shape"].tolist() == [[box[3] - box[1], box[2] - box[0]]] and view["idx"] == 1


@pytest.mark.skipif(importlib.util.find_spec("mast3r") is not None, reason="MASt3R is installed here")
def test_mast3r_without_the_package_gives_the_install_hint(tmp_path):
    with pytest.raises(MissingWeights, match="set weights.mast3r in"):
        Mast3rMatcher.load(None)
    checkpoint = tmp_path / "MASt3R.pth"
    checkpoint.write_bytes(b"")
    with pytest.raises(ImportError, match="git clone --recursive https://github.com/naver/mast3r"):
        Mast3rMatcher.load(checkpoint)


# ---------------------------------------------------------------------------------------------------- camera poses


@pytest.fixture(scope="module")
def textured_room():
    return textured_room_field()


def _render_video(field, c2w: Tensor, K: Tensor, width: int, height: int) -> np.ndarray:
    from d4s.render import render

    background = torch.tensor([0.5, 0.5, 0.5])
    rgb = render(field, c2w, K.expand(c2w.shape[0], 3, 3), width, height, backend="torch", background=background).rgb
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _angle_deg(R: Tensor) -> Tensor:
    return torch.rad2deg(torch.arccos(((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))


@pytest.mark.parametrize("trajectory", ["forward", "spiral"])
def test_estimated_poses_follow_the_rendered_trajectory(textured_room, trajectory):
    from d4s.geometry import intrinsics_from_fov
    from d4s.geometry.trajectories import make_trajectory

    width, height = 128, 96
    K = intrinsics_from_fov(width, height, 60.0)
    truth = make_trajectory(trajectory, 6, scene_scale=4.0)
    video = _render_video(textured_room, truth, K, width, height)
    c2w, stats = estimate_poses(video, K.numpy(), return_stats=True)
    assert c2w.shape == (6, 4, 4) and c2w.dtype == torch.float32 and not stats.failed_frames
    torch.testing.assert_close(c2w[0], torch.eye(4))
    assert float(_angle_deg(truth[:, :3, :3].transpose(1, 2) @ c2w[:, :3, :3]).max()) < 5.0
    step_truth = torch.linalg.inv(truth[:-1]) @ truth[1:]
    step_estimate = torch.linalg.inv(c2w[:-1]) @ c2w[1:]
    assert float(_angle_deg(step_truth[:, :3, :3].transpose(1, 2) @ step_estimate[:, :3, :3]).max()) < 4.0
    torch.testing.assert_close(step_estimate[:, :3, 3].norm(dim=-1), torch.ones(5))  # unit-free steps
    cosine = F.cosine_similarity(truth[1:, :3, 3] - truth[:-1, :3, 3], c2w[1:, :3, 3] - c2w[:-1, :3, 3], dim=-1)
    assert float(cosine.min()) > 0.9
    torch.testing.assert_close(estimate_poses(video, K), c2w)  # deterministic; K may be a tensor


def test_unmatched_frames_keep_the_previous_pose_and_are_counted(textured_room, caplog):
    from d4s.geometry import intrinsics_from_fov
    from d4s.geometry.trajectories import make_trajectory

    K = intrinsics_from_fov(128, 96, 60.0)
    video = _render_video(textured_room, make_trajectory("forward", 4, scene_scale=4.0), K, 128, 96)
    video[2] = 128  # a blank frame: no features
    c2w, stats = estimate_poses(video, K, return_stats=True)
    assert stats.failed_frames == [2] and stats.matches[1] == 0 and len(stats.inliers) == 3
    torch.testing.assert_close(c2w[2], c2w[1])
    assert c2w[3, 2, 3] > c2w[1, 2, 3] + 0.5  # frame 3 registered against frame 1, further forward
    assert "kept the previous pose" in caplog.text


def test_estimate_poses_checks_its_inputs():
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    with pytest.raises(ValueError, match="video"):
        estimate_poses(np.zeros((3, 48, 64, 3), dtype=np.float32), K)
    with pytest.raises(ValueError, match="K"):
        estimate_poses(np.zeros((3, 48, 64, 3), dtype=np.uint8), np.eye(2))
    with pytest.raises(ValueError, match="detector"):
        estimate_poses(np.zeros((3, 48, 64, 3), dtype=np.uint8), K, detector="akaze")
    single = estimate_poses(np.zeros((1, 48, 64, 3), dtype=np.uint8), K)
    torch.testing.assert_close(single, torch.eye(4)[None])


@pytest.mark.parametrize("trajectory", ["spiral", "forward"])
def test_the_render_depth_gives_metric_steps(textured_room, trajectory):
    """With the frames' own depth the steps come out in metres (PnP on depth-lifted keypoints): the spiral's growing
    step lengths included, which no single scale recovers from unit steps."""
    from d4s.eval.poses import relative_pose_error
    from d4s.geometry import intrinsics_from_fov
    from d4s.geometry.trajectories import make_trajectory
    from d4s.render import render

    width, height = 128, 96
    K = intrinsics_from_fov(width, height, 60.0)
    truth = make_trajectory(trajectory, 6, scene_scale=4.0)
    out = render(textured_room, truth, K.expand(6, 3, 3), width, height, "torch", torch.tensor([0.5, 0.5, 0.5]))
    video = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    c2w, stats = estimate_poses(video, K, depth=out.depth, return_stats=True)
    assert not stats.failed_frames and min(stats.inliers) >= 20
    steps_truth = (truth[1:, :3, 3] - truth[:-1, :3, 3]).norm(dim=-1)
    steps = (c2w[1:, :3, 3] - c2w[:-1, :3, 3]).norm(dim=-1)
    torch.testing.assert_close(steps, steps_truth, rtol=0.25, atol=0.02)
    metric = relative_pose_error(c2w.double(), truth.double(), 1, "none")
    unit = relative_pose_error(estimate_poses(video, K).double(), truth.double(), 1, "scale")
    assert metric["trans_mean"] < 0.1 * float(steps_truth.mean())  # measured: 0.03 m (spiral), 0.01 m (forward)
    assert metric["trans_mean"] < 0.6 * unit["trans_mean"] and metric["rot_mean_deg"] < 1.0
    with pytest.raises(ValueError, match="depth"):
        estimate_poses(video, K, depth=out.depth[:, :10])
