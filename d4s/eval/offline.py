"""No network at evaluation time: the switches that keep the Hugging Face libraries from reaching the Hub.

A light module (no heavy imports), so ``python -m d4s.eval`` can set them before anything reads them.
"""

from __future__ import annotations

import os

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def go_offline() -> None:
    """Set the offline switches (read by ``huggingface_hub`` and ``transformers`` when first imported)."""
    os.environ.update(OFFLINE)
