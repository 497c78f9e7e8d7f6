"""Issue 12 (hardening), the sample / metrics / config items: 3, 4, 5, 6, 13 and 16."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional

import numpy as np
import pytest

from pathup.cli import main
import pathup.config as config_layer
from pathup.config import config_from_args, from_dict
from pathup.errors import PathUpError


# ----------------------------------------------------------------------------------------- item 6
@dataclasses.dataclass
class _Ranged:
    rate: float = dataclasses.field(default=0.5, metadata={"min": 0, "max": 1, "max_exclusive": True})
    pos: float = dataclasses.field(default=1.0, metadata={"min": 0, "min_exclusive": True})
    n: int = dataclasses.field(default=2, metadata={"min": 2})
    free: float = 1.0
    opt: Optional[float] = dataclasses.field(default=None, metadata={"min": 0})
    rates: list[float] = dataclasses.field(default_factory=lambda: [0.1], metadata={"min": 0})


@pytest.mark.parametrize("data,message", [
    ({"free": "nan"}, "--free must be a finite number, got nan"),
    ({"free": float("inf")}, "--free must be a finite number, got inf"),
    ({"free": "-inf"}, "--free must be a finite number, got -inf"),
    ({"rate": 1.0}, "--rate must be in [0, 1), got 1.0"),
    ({"rate": -0.1}, "--rate must be in [0, 1), got -0.1"),
    ({"pos": 0}, "--pos must be > 0, got 0.0"),
    ({"n": 1}, "--n must be at least 2, got 1"),
    ({"opt": -1}, "--opt must be at least 0, got -1.0"),
    ({"rates": [0.1, "nan"]}, "--rates must be a finite number, got nan"),
    ({"rates": [0.1, -2]}, "--rates must be at least 0, got -2.0"),
])
def test_config_layer_rejects_non_finite_and_out_of_range_values(data, message):
    with pytest.raises(PathUpError) as err:
        from_dict(_Ranged, data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_validate_is_callable_from_python_and_accepts_valid_values():
    config_layer.validate(_Ranged())
    config_layer.validate(_Ranged(opt=None, rate=0.0, pos=1e-9, n=2))
    assert from_dict(_Ranged, {"rate": "0.25", "opt": 3}).opt == 3.0
    with pytest.raises(PathUpError, match="--free must be a finite number"):
        config_layer.validate(_Ranged(free=math.nan))
    with pytest.raises(PathUpError, match=r"--pos must be > 0"):
        config_layer.validate(_Ranged(pos=-1.0))


def test_config_yaml_nan_is_refused_naming_the_option(tmp_path):
    import argparse

    y = tmp_path / "c.yaml"
    y.write_text("free: .nan\n")
    with pytest.raises(PathUpError, match="--free must be a finite number"):
        config_from_args(_Ranged, argparse.Namespace(config=str(y)))


@pytest.mark.parametrize("command", ["generate", "upscale"])
@pytest.mark.parametrize("value,message", [
    ("nan", "--guidance must be a finite number, got nan"),
    ("inf", "--guidance must be a finite number, got inf"),
    ("-1", "--guidance must be in [0, 100], got -1.0"),
    ("1e9", "--guidance must be in [0, 100], got 1000000000.0"),
])
def test_generate_and_upscale_refuse_bad_guidance_before_any_work(tmp_path, capsys, command, value, message):
    out = tmp_path / "out"
    if command == "generate":
        argv = ["generate", str(tmp_path / "no-model"), "--class", "x", "--out", str(out)]
    else:
        argv = ["upscale", str(tmp_path / "no.png"), "--model", str(tmp_path / "no-model"), "--class", "x",
                "--out", str(out)]
    rc = main([*argv, "--guidance", value])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("field_name,value,message", [
    ("strength", float("nan"), "--strength must be a finite number"),
    ("strength", 0.0, "--strength must be in (0, 1]"),
    ("guidance", float("inf"), "--guidance must be a finite number"),
    ("seed", -1, "--seed must be in [0, 9223372036854775807], got -1"),
])
def test_sample_config_python_api_is_validated(field_name, value, message):
    from pathup.sample.config import SampleConfig, validate as sample_validate

    with pytest.raises(PathUpError, match=message.replace("(", r"\(").replace("[", r"\[")):
        sample_validate(SampleConfig(**{field_name: value}))


def test_evaluate_config_ranges_on_cli_and_in_python(tmp_path, capsys):
    from pathup.metrics.evaluate import EvaluateConfig, evaluate

    rc = main(["evaluate", "--real", str(tmp_path), "--fake", str(tmp_path), "--kid-subset-size", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--kid-subset-size must be at least 2, got 0" in err
    with pytest.raises(PathUpError, match="--kid-subset-size must be at least 2"):
        evaluate(EvaluateConfig(real=str(tmp_path), fake=str(tmp_path), kid_subset_size=1))
    with pytest.raises(PathUpError, match="--seam-band must be at least 0"):
        from_dict(EvaluateConfig, {"real": "r", "fake": "f", "seam_band": -1})


def test_kid_subset_size_error_names_the_option():
    from pathup.metrics.kid import kid

    rng = np.random.default_rng(0)
    with pytest.raises(PathUpError, match="--kid-subset-size must be at least 2, got 0"):
        kid(rng.random((11, 4)), rng.random((12, 4)), subsets=2, subset_size=0)


@pytest.mark.parametrize("option,value,message", [
    ("val_fraction", "nan", "--val-fraction must be a finite number"),
    ("test_fraction", "1.5", "--test-fraction must be in [0, 1), got 1.5"),
    ("tissue_threshold", "inf", "--tissue-threshold must be a finite number"),
    ("min_tissue", "-0.5", "--min-tissue must be in [0, 1], got -0.5"),
    ("max_per_class", "-3", "--max-per-class must be at least 0, got -3"),
])
def test_prepare_config_ranges(tmp_path, option, value, message):
    from pathup.data.prepare import PrepareConfig

    with pytest.raises(PathUpError) as err:
        from_dict(PrepareConfig, {"out": str(tmp_path / "ds"), option: value})
    assert message in str(err.value)


def test_every_float_option_of_every_stage_must_be_finite():
    """The finite check is generic: the training options get it without metadata of their own."""
    from pathup.train.config import TrainConfig

    for name in ("max_grad_norm", "weight_decay", "vae_lr", "vae_kl_weight", "guidance_scale"):
        with pytest.raises(PathUpError, match=f"--{name.replace('_', '-')} must be a finite number"):
            from_dict(TrainConfig, {name: "nan"})


@pytest.mark.parametrize("method", ["overview", "upscale"])
def test_pipeline_stage_calls_refuse_non_finite_guidance(method):
    from pathup.sample.pipeline import PathUpPipeline

    pipe = PathUpPipeline(object(), model_name="unused", progress=False)  # the check comes before the model
    call = getattr(pipe, method)
    args = (np.zeros((8, 8, 3), np.uint8),) if method == "upscale" else ()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(PathUpError, match="--guidance must be a finite number"):
            call(*args, prompt="x", guidance=bad)
