"""Tiny local stand-ins of the evaluation networks, in their official layouts (transformers folders)."""

import pytest
import torch


def _clip_vocab() -> dict[str, int]:
    vocab = {}
    for suffix in ("", "</w>"):
        for char in "abcdefghijklmnopqrstuvwxyz":
            vocab[char + suffix] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return vocab


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])  # characters only: a real BPE vocabulary is not needed
    special = {"bos_token_id": len(vocab) - 2, "eos_token_id": len(vocab) - 1, "pad_token_id": len(vocab) - 1}
    layers = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "max_position_embeddings": 16, **layers, **special},
        vision_config={"image_size": 32, "patch_size": 8, **layers},
        projection_dim=8,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def dino_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dino")
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return path
