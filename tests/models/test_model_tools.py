"""Model tools: a local T5 encoder, the caption cache it writes, and the parameter summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from d4s.data.schema import GENERIC_PROMPT
from d4s.models.__main__ import main
from d4s.models.config import ModelConfig
from d4s.models.cost import field_size
from d4s.models.text import TextEncoder

REPO = Path(__file__).resolve().parents[2]
WORDS = (
    "a scene with 4K ultra HD, surround motion realistic tone panoramic shot wide-angle view cinematic quality red box"
)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    """A tiny random T5 encoder with a word-level tokenizer, saved the way transformers loads local encoders."""
    path = tmp_path_factory.mktemp("t5")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(sorted(set(WORDS.split())))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)
    torch.manual_seed(0)
    T5EncoderModel(
        T5Config(vocab_size=len(vocab), d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    ).save_pretrained(path)
    return path


def test_t5_embeddings_and_the_caption_cache_agree(tiny_t5, tmp_path):
    encoder = TextEncoder("t5", str(tiny_t5), max_length=6)
    direct = encoder(["a red box", ""])
    assert direct.shape == (2, 6, 8)
    config = yaml.safe_load((REPO / "configs" / "tiny" / "model.yaml").read_text())
    config["text"] = {"mode": "t5", "path": str(tiny_t5), "max_length": 6, "dim": 8}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "captions.txt").write_text("a red box\n\na red box\n")
    args = ["--config", str(tmp_path / "model.yaml"), "--cache-captions", str(tmp_path / "captions.txt")]
    assert main([*args, "--out", str(tmp_path / "captions.pt")]) == 0
    cached = TextEncoder("cache", str(tmp_path / "captions.pt"))
    assert set(cached.cache) == {"a red box", GENERIC_PROMPT, ""}
    torch.testing.assert_close(cached(["a red box", ""]), direct)
    # the unconditional branch of guidance: T5 of the empty prompt (as CogVideoX), not zeros
    unconditional = encoder.null(2)
    assert unconditional.abs().sum() > 0 and torch.equal(unconditional[0], encoder.embed([""])[0])
    torch.testing.assert_close(cached.null(2), unconditional)


def test_a_umt5_encoder_is_read_as_wans_pipeline_encodes(tiny_t5, tmp_path):
    """Wan2.2's text encoder (UMT5): the caption's tokens attended, zeros past them (WanPipeline._get_t5_prompt_embeds:
    the encoder with the attention mask, each embedding cut at its length and padded with zeros)."""
    folder = tmp_path / "umt5"
    PreTrainedTokenizerFast.from_pretrained(tiny_t5).save_pretrained(folder)
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=40, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    UMT5EncoderModel(config).save_pretrained(folder)
    encoder = TextEncoder("t5", str(folder), max_length=6)
    ours = encoder.embed(["a red box", ""])
    reference_model = UMT5EncoderModel.from_pretrained(folder).eval()
    tokens = encoder.tokenizer(
        ["a red box", ""], padding="max_length", max_length=6, truncation=True, return_tensors="pt"
    )
    lengths = tokens.attention_mask.sum(1)
    with torch.no_grad():
        hidden = reference_model(tokens.input_ids, tokens.attention_mask).last_hidden_state
    reference = torch.stack([torch.cat([u[:n], u.new_zeros(6 - n, 8)]) for u, n in zip(hidden, lengths)])
    torch.testing.assert_close(ours, reference)
    assert lengths.tolist() == [3, 0] and ours[0, 3:].abs().sum() == 0 and ours[0, :3].abs().sum() > 0


def test_the_tokenizer_is_found_beside_the_encoder_and_a_blank_one_is_refused(tiny_t5, tmp_path):
    root = tmp_path / "CogVideoX"
    encoder_only = T5EncoderModel.from_pretrained(tiny_t5)
    encoder_only.save_pretrained(root / "text_encoder")
    PreTrainedTokenizerFast.from_pretrained(tiny_t5).save_pretrained(root / "tokenizer")
    torch.testing.assert_close(
        TextEncoder("t5", str(root / "text_encoder"), max_length=6)(["a red box"]),
        TextEncoder("t5", str(tiny_t5), max_length=6)(["a red box"]),
    )
    big = tmp_path / "big"  # a model whose vocabulary no tokenizer here matches
    T5EncoderModel(T5Config(vocab_size=32128, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)).save_pretrained(
        big
    )
    PreTrainedTokenizerFast.from_pretrained(tiny_t5).save_pretrained(big)
    with pytest.raises(ValueError, match="tokens for a model of 32128"):
        TextEncoder("t5", str(big))


def test_a_cogvideox_tokenizer_folder_with_only_spiece_model_loads_as_sentencepiece_tokenizes(tmp_path):
    """CogVideoX-5b-I2V ships T5's tokenizer as ``tokenizer/spiece.model`` without ``tokenizer.json``. A SentencePiece
    model trained here on a few sentences, alone in that folder, must give sentencepiece's own ids (then T5's
    ``</s>``, padded with ``<pad>``), and the embeddings must be the encoder's on exactly those ids."""
    sentences = [WORDS, "a red room with a wooden table", "a camera moves through a forest at night"] * 10
    root = tmp_path / "CogVideoX"
    (root / "tokenizer").mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(root / "tokenizer" / "spiece"), vocab_size=40,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    (root / "tokenizer" / "spiece.vocab").unlink()
    torch.manual_seed(0)
    config = T5Config(vocab_size=140, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)  # 40 + T5's 100 extra ids
    T5EncoderModel(config).save_pretrained(root / "text_encoder")
    encoder = TextEncoder("t5", str(root / "text_encoder"), max_length=32)
    reference = spm.SentencePieceProcessor(model_file=str(root / "tokenizer" / "spiece.model"))
    captions = ["a red box", "a wide cinematic forest view"]
    pieces = [reference.encode(caption) + [1] for caption in captions]  # then </s>
    assert max(map(len, pieces)) < 32  # no truncation
    ids = torch.tensor([row + [0] * (32 - len(row)) for row in pieces])
    assert torch.equal(
        encoder.tokenizer(captions, padding="max_length", max_length=32, return_tensors="pt").input_ids, ids
    )
    torch.testing.assert_close(encoder(captions), encoder.encoder(ids).last_hidden_state)
    (root / "tokenizer" / "spiece.model").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"tokenizer holds no T5 tokenizer \(spiece\.model or tokenizer\.json\)"
    ):
        TextEncoder("t5", str(root / "text_encoder"))


@pytest.mark.parametrize(("stride", "degree"), [(2, 0), (1, 0), (1, 3)])
def test_the_field_size_of_a_paper_scene_is_the_closed_form(stride, degree):
    """One Gaussian per stride x stride pixels of each of the 49 frames at 512²: 11 floats (means 3, rotation 4,
    scales 3, opacity 1) plus 3 (degree + 1)² SH coefficients, and 10 (dmu 3, dq 4, ds 3) per target time."""
    config = ModelConfig.from_yaml(REPO / "configs" / "model" / "paper.yaml")
    ldrm = dataclasses.replace(config.ldrm, gaussian_stride=stride, sh_degree=degree)
    size = field_size(dataclasses.replace(config, ldrm=ldrm))
    gaussians = 49 * (512 // stride) ** 2
    assert size == {
        "gaussians": gaussians,
        "canonical_bytes": 4 * gaussians * (11 + 3 * (degree + 1) ** 2),
        "bytes_per_time": 4 * gaussians * 10,
    }


def test_summary_counts_parameters(capsys):
    assert main(["--config", str(REPO / "configs" / "model" / "paper.yaml"), "--summary"]) == 0
    table = capsys.readouterr().out
    transformer = float(table.splitlines()[0].split()[-2])
    assert 5500 < transformer < 5700 and "LDRM total" in table  # CogVideoX-5B, in millions
    assert "this config (stride 2, SH 0)           3.21 M" in table
