"""Config, file helpers, prompts, CLI error handling and the model's diffusers round trip."""

import argparse
import dataclasses
from typing import Literal, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from pathup.config import add_config_args, config_from_args, from_dict, load_yaml, save_config
from pathup.errors import PathUpError
from pathup.io import atomic_path, load_rgb, to_rgb8
from pathup.prompts import PromptTable, build_prompt


@dataclasses.dataclass
class _Cfg:
    size: int = dataclasses.field(default=512, metadata={"help": "tile size"})
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    name: Optional[str] = None
    sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 2])


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_args(p, _Cfg)
    return p.parse_args(argv)


def test_config_precedence_defaults_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("size: 256\nrate: 0.25\nsizes: [3, 4]\n")
    cfg = config_from_args(_Cfg, _parse(["--config", str(y), "--rate", "0.75", "--flag"]))
    assert cfg == _Cfg(size=256, rate=0.75, mode="a", flag=True, name=None, sizes=[3, 4])
    save_config(cfg, tmp_path / "out.yaml")
    assert from_dict(_Cfg, load_yaml(tmp_path / "out.yaml")) == cfg


def test_config_rejects_unknown_and_bad_values(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("sise: 3\n")
    with pytest.raises(PathUpError, match="unknown option.*sise"):
        config_from_args(_Cfg, _parse(["--config", str(y)]))
    with pytest.raises(PathUpError, match="allowed: a, b"):
        from_dict(_Cfg, {"mode": "c"})
    with pytest.raises(PathUpError, match="must be int"):
        from_dict(_Cfg, {"size": "big"})
    with pytest.raises(SystemExit):
        _parse(["--mode", "c"])


def test_to_rgb8_modes():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb8(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent on white
    g16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert to_rgb8(g16).getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] * 256)
    assert to_rgb8(pal).getpixel((1, 1)) == (10, 20, 30)


def test_load_rgb_errors(tmp_path):
    with pytest.raises(PathUpError, match="not found"):
        load_rgb(tmp_path / "missing.png")
    bad = tmp_path / "bad.jpg"
    Image.new("RGB", (64, 64), (200, 100, 50)).save(bad)
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(PathUpError, match="bad.jpg"):
        load_rgb(bad)


def test_an_image_over_the_pixel_limit_is_one_message_naming_it_once(tmp_path):
    """PathUpError is a ValueError: the limit's own message must not be wrapped in "cannot read image"."""
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    with pytest.raises(PathUpError) as err:
        load_rgb(big, max_pixels=1000)
    assert "cannot read image" not in str(err.value) and str(err.value).count("big.png") == 1
    assert "90,000 pixels" in str(err.value)


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_prompts():
    assert build_prompt("DCIS", "overview") == "ductal carcinoma in situ, overview"
    assert build_prompt("ductal_carcinoma", "patch") == "ductal carcinoma, patch"
    t = PromptTable(["a", "b"])
    assert len(t) == 4 and t.prompt_id("b", "overview") == 3
    assert t.prompts()[3] == "b, overview"
    t1 = PromptTable(["a", "b"], levels=[])
    assert len(t1) == 2 and t1.prompts() == ["a", "b"]
    with pytest.raises(PathUpError, match="knows: a, b"):
        t.prompt_id("c", "patch")


def test_cli_help_and_one_line_error(capsys):
    from pathup.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "pathup" in capsys.readouterr().out


def test_model_roundtrip_through_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    from pathup.model import build_ldm, load_ldm, save_ldm

    m = build_ldm("tiny", PromptTable(["x", "y"]), seed=1)
    m.fel_bank = torch.nn.functional.normalize(torch.randn(4, 128), dim=1)
    save_ldm(m, tmp_path / "model")
    m2 = load_ldm(tmp_path / "model")
    assert m2.prompts.classes == ["x", "y"]
    assert torch.equal(m2.fel_bank, m.fel_bank)
    for name in ("vae", "unet", "text_encoder"):
        a, b = m.modules()[name].state_dict(), m2.modules()[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model")
    assert pipe.unet.config.sample_size == 16
    ids = m2.tokenize(["x, patch"])
    assert torch.equal(ids, m.tokenize(["x, patch"]))
    with pytest.raises(PathUpError, match="not a diffusers model folder"):
        load_ldm(tmp_path / "model" / "vae")
    assert load_ldm(tmp_path).prompts.classes == ["x", "y"]  # a run folder holding model/
    with pytest.raises(PathUpError, match="unknown model size|model not found"):
        load_ldm(str(tmp_path / "nope"))
