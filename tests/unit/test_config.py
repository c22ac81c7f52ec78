"""Hydra composition, config groups and one-line errors."""

import pytest

from foley_dist.config import GenerateConfig, load
from foley_dist.errors import FoleyError


def test_defaults_and_overrides():
    cfg = load("generate", ["video=a.mp4", "prompt=rain on a tin roof", "seed=7", "segment_seconds=4"])
    assert isinstance(cfg, GenerateConfig)
    assert (cfg.video, cfg.prompt, cfg.seed, cfg.segment_seconds) == ("a.mp4", "rain on a tin roof", 7, 4.0)
    assert cfg.model.name == "tiny" and cfg.layout.ranks == ["vision", "fusion", "diffusion"]


def test_groups():
    cfg = load("generate", ["video=a", "layout=replicated", "hardware=cpu", "model=hunyuan_xl", "model.path=/w"])
    assert cfg.layout.ranks == ["vision+fusion", "diffusion x3"]
    assert cfg.hardware.device == "cpu" and cfg.model.name == "hunyuan_xl" and cfg.model.path == "/w"
    assert load("generate", ["video=a", "layout.ranks=[vision,fusion,diffusion x2]"]).layout.ranks[-1] == "diffusion x2"


@pytest.mark.parametrize("overrides,needle", [
    (["video=a", "colour=red"], "unknown setting 'colour'"),
    (["prompt=x"], "missing required setting 'video'"),
    (["video=a", "model=nope"], "model/nope"),
    (["video=a", "seed=abc"], "seed=abc"),
])
def test_errors_are_one_line(overrides, needle):
    with pytest.raises(FoleyError) as e:
        load("generate", overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)
