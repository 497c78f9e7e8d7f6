"""The shared building blocks of issue 13: stages/resume, option aliases, safe names, error types."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest

from pathup.config import add_config_args, config_from_args, from_dict, option
from pathup.errors import OptionError, PathUpError
from pathup.io import safe_name, unique_name
from pathup.stages import JsonlLog, Marker, Stages, check_settings, fingerprint


def test_pathup_error_is_a_value_error_and_option_error_names_field_or_flag():
    assert issubclass(PathUpError, ValueError)
    err = OptionError("kid_subset_size", "must be at least 2, got 0")
    assert str(err) == "kid_subset_size must be at least 2, got 0"
    assert err.for_cli() == "--kid-subset-size must be at least 2, got 0"
    with pytest.raises(ValueError):
        raise err


def test_fingerprint_is_order_independent_and_sensitive_to_values():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint({})) == 16


def test_marker_matches_only_the_same_settings_with_outputs_present(tmp_path):
    m = Marker(tmp_path / "m.json")
    assert m.matching({"x": 1}) is None
    m.write({"x": 1}, seconds=3.0)
    assert m.matching({"x": 1})["seconds"] == 3.0
    assert m.matching({"x": 2}) is None
    assert m.matching({"x": 1}, requires=[tmp_path / "missing"]) is None
    (tmp_path / "m.json").write_text("{cut sho")  # an interrupted write of an older version
    assert m.matching({"x": 1}) is None


def test_check_settings_resumes_refuses_or_overwrites(tmp_path):
    path = tmp_path / "state.json"
    a = {"options": {"size": 64, "seed": 0}, "sources": "abc"}
    assert check_settings(path, a, overwrite=False, folder=tmp_path) is False  # new
    assert check_settings(path, a, overwrite=False, folder=tmp_path) is True  # same: resume
    b = {"options": {"size": 128, "seed": 0}, "sources": "abc"}
    with pytest.raises(PathUpError, match="other options size"):
        check_settings(path, b, overwrite=False, folder=tmp_path)
    assert json.loads(path.read_text()) == a  # the refusal changed nothing
    assert check_settings(path, b, overwrite=True, folder=tmp_path) is False
    assert json.loads(path.read_text()) == b


def test_jsonl_log_skips_a_line_cut_short(tmp_path):
    log = JsonlLog(tmp_path / "d" / "done.jsonl")
    log.append({"key": "a", "n": 1})
    log.append({"key": "b", "n": 2})
    with log.path.open("a") as f:
        f.write('{"key": "c", "n"')
    assert log.read() == {"a": {"key": "a", "n": 1}, "b": {"key": "b", "n": 2}}


def test_stages_reuse_and_rerun_after_an_earlier_stage_ran(tmp_path, capsys):
    calls = []

    def stage(name, value):
        calls.append(name)
        return value

    s = Stages(tmp_path, ["one", "two"])
    assert s.run("one", {"k": 1}, lambda: stage("one", 1)) == 1
    assert s.run("two", {"k": 2}, lambda: stage("two", 2)) == 2
    s = Stages(tmp_path, ["one", "two"])
    assert s.run("one", {"k": 1}, lambda: stage("one", 10)) == 1  # reused
    assert s.run("two", {"k": 2}, lambda: stage("two", 20)) == 2  # reused
    s = Stages(tmp_path, ["one", "two"])
    assert s.run("one", {"k": 9}, lambda: stage("one", 9)) == 9  # settings changed: ran
    assert s.run("two", {"k": 2}, lambda: stage("two", 22)) == 22  # an earlier stage ran: ran again
    assert calls == ["one", "two", "one", "two"]
    assert "done earlier, reused" in capsys.readouterr().out


def test_safe_and_unique_names():
    assert safe_name("a b/c") == "a_b_c"
    assert safe_name("...") == "class" and safe_name("...", empty="x") == "x"
    assert unique_name("DCIS") == "DCIS"
    assert unique_name("a b") != unique_name("a_b")
    assert unique_name("腫瘍") != unique_name("良性")
    assert unique_name("a b").startswith("a_b-") and len(unique_name("a b")) == len("a_b-") + 8


@dataclass
class _Cfg:
    latent_patch: int = option(64, "latent patch size", min=1, aliases=("patch_size",))
    seed: int = option(0, "seed")


def test_option_aliases_in_yaml_keywords_and_hidden_flags(tmp_path):
    assert from_dict(_Cfg, {"patch_size": 32}).latent_patch == 32
    with pytest.raises(PathUpError, match="same option"):
        from_dict(_Cfg, {"patch_size": 32, "latent_patch": 16})
    with pytest.raises(OptionError, match="latent_patch must be at least 1"):
        from_dict(_Cfg, {"patch_size": 0})
    parser = argparse.ArgumentParser()
    add_config_args(parser, _Cfg)
    assert "--patch-size" not in parser.format_help() and "--latent-patch" in parser.format_help()
    assert config_from_args(_Cfg, parser.parse_args(["--patch-size", "8"])).latent_patch == 8
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("patch_size: 16\n")
    cfg = config_from_args(_Cfg, parser.parse_args(["--config", str(yaml_file), "--latent-patch", "4"]))
    assert cfg.latent_patch == 4  # the command line overrides the YAML's older name
