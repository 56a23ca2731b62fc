"""The shared config loader (d4s.utils.config): checked keys and types, Literal choices, overrides, one error format."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from d4s.data.clips import ClipConfig
from d4s.data.datamodule import SplitConfig
from d4s.diffusion.ddpm import DDPMSchedule
from d4s.diffusion.flow_matching import FlowMatching
from d4s.diffusion.sampler import Guidance, SamplingConfig
from d4s.eval.config import GenerationConfig, MetricConfig
from d4s.models.ldrm import LDRMConfig
from d4s.models.video_dit import VideoDiTConfig
from d4s.stages.base import Recipe
from d4s.utils.config import apply_overrides, from_dict, read_yaml_mapping


@dataclass
class Inner:
    mode: Literal["fast", "slow"] = "fast"
    layers: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    rate: float = 0.5
    steps: int = 3
    name: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_values_are_checked_converted_and_nested():
    config = from_dict(Outer, {"rate": 2, "inner": {"mode": "slow", "layers": [4, 5, 6]}}, "run.yaml")
    assert config == Outer(rate=2.0, inner=Inner("slow", (4, 5, 6)))
    assert isinstance(config.rate, float) and isinstance(config.inner.layers, tuple)
    assert from_dict(Outer, None) == Outer()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inner": {"mode": "medium"}}, r"^run\.yaml\.inner\.mode: 'medium' is not one of \['fast', 'slow'\]$"),
        ({"steps": 2.5}, r"^run\.yaml\.steps: expected int, got 2\.5$"),
        ({"steps": True}, r"^run\.yaml\.steps: expected int, got True$"),
        ({"name": 3}, r"^run\.yaml\.name: expected str, got 3$"),
        ({"inner": {"layers": 3}}, r"^run\.yaml\.inner\.layers: expected a list, got 3$"),
        ({"ratee": 1.0}, r"^run\.yaml: unknown keys \['ratee'\]; known: rate, steps, name, inner$"),
        ({"inner": 4}, r"^run\.yaml\.inner: expected a mapping, got 4$"),
    ],
)
def test_a_bad_value_is_a_value_error_naming_its_key(values, message):
    with pytest.raises(ValueError, match=message):
        from_dict(Outer, values, "run.yaml")


def test_dotted_overrides_and_yaml_files(tmp_path):
    values = apply_overrides({"inner": {"mode": "fast"}}, {"inner.layers": [7], "steps": 9, "new.deep.key": 1})
    assert values == {"inner": {"mode": "fast", "layers": [7]}, "steps": 9, "new": {"deep": {"key": 1}}}
    with pytest.raises(ValueError, match=r"^steps\.x: 'steps' is not a section$"):
        apply_overrides({"steps": 9}, {"steps.x": 1})
    path = tmp_path / "config.yaml"
    path.write_text("rate: 0.1\ninner: {mode: slow}\n")
    assert from_dict(Outer, read_yaml_mapping(path)) == Outer(rate=0.1, inner=Inner("slow"))
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping of settings, got a list"):
        read_yaml_mapping(path)
    path.write_text("rate: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_yaml_mapping(path)
    with pytest.raises(FileNotFoundError, match="config not found"):
        read_yaml_mapping(tmp_path / "missing.yaml")


def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {f.name: typing.get_args(hints[f.name]) for f in fields(cls) if typing.get_origin(hints[f.name]) is Literal}


# every config dataclass of d4s whose fields take a fixed set of values, with those fields
CHOICE_FIELDS = {
    Recipe: {"dit", "ldrm_input", "motion_frames", "render_backend"},
    FlowMatching: {"timestep_sampling", "weighting"},
    DDPMSchedule: {"beta_schedule"},
    Guidance: {"schedule", "direction"},
    SamplingConfig: {"guidance_schedule"},
    VideoDiTConfig: {"backbone", "posterior", "codec", "prediction"},
    LDRMConfig: {"deformation_time"},
    ClipConfig: {"video_backend"},
    SplitConfig: {"motion"},
    GenerationConfig: {"guidance_schedule", "backend", "dtype"},
    MetricConfig: {"rpe_align", "depth_alignment"},
}


@pytest.mark.parametrize("cls", list(CHOICE_FIELDS), ids=lambda cls: cls.__name__)
def test_every_choice_in_the_configs_is_a_literal_the_loader_and_the_class_enforce(cls):
    """The loader refuses a value outside a field's ``Literal``; so does the class itself where it checks its
    fields (a config built in code), in the same words."""
    literals = _literal_fields(cls)
    assert set(literals) == CHOICE_FIELDS[cls]
    for name, allowed in literals.items():
        with pytest.raises(ValueError, match=rf"^cfg\.{name}: 'bogus' is not one of {re.escape(str(list(allowed)))}$"):
            from_dict(cls, {name: "bogus"}, "cfg")
        if hasattr(cls, "__post_init__"):
            with pytest.raises(ValueError, match=rf"{name}: 'bogus' is not one of {re.escape(str(list(allowed)))}$"):
                cls(**{name: "bogus"})
