"""Config loading: defaults, YAML, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from seg_ext.config import parse_value
from seg_ext.errors import ConfigError
from seg_ext.methods import METHODS, method_config


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  epochs: 3\nmodel:\n  name: baseconv\n  width: 8\n")
    cfg = method_config("semantic", path, ["train.epochs=5", "data.image_size=[64,96]"])
    assert cfg["train"]["lr"] == pytest.approx(1e-4) and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["epochs"] == 5
    assert cfg["data"]["image_size"] == [64, 96]
    assert cfg["model"] == {"name": "baseconv", "width": 8}  # another model: the default block is replaced
    defaults = METHODS["semantic"].defaults()
    assert cfg["data"]["batch_size"] == defaults["data"]["batch_size"] and cfg["method"] == "semantic"
    assert defaults["train"]["epochs"] != 5  # defaults untouched


def test_each_method_has_its_own_blocks_and_checks_them():
    watershed = method_config("watershed")
    assert "watershed" in watershed and "watershed" not in method_config("maskrcnn")
    assert watershed["model"]["name"] == "dual_unet" and watershed["data"]["batch_size"] == 4
    with pytest.raises(ConfigError, match="unknown config key 'watershed' in --opts; valid keys here are: augment, data"):
        method_config("maskrcnn", overrides=["watershed.levels=[0,1,2]"])
    with pytest.raises(ConfigError, match=r"watershed\.levels' is \[0, 2, 1\]; expected increasing"):
        method_config("watershed", overrides=["watershed.levels=[0,2,1]"])
    with pytest.raises(ConfigError, match=r"config key 'method' is 'nope'; expected one of: semantic, maskrcnn, watershed"):
        method_config("nope")


def test_same_model_name_merges_kwargs():
    cfg = method_config("semantic", overrides=["model.depth=2"])
    assert cfg["model"]["name"] == "unet" and cfg["model"]["depth"] == 2 and "base_width" in cfg["model"]


def test_parse_value():
    assert parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2] and parse_value("cosine") == "cosine"


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.lrr=0.1", r"unknown config key 'train\.lrr' in --opts; valid keys here are: .*\blr\b"),
        ("trian.lr=0.1", r"unknown config key 'trian'"),
        ("train.epochs=abc", r"config key 'train\.epochs' in --opts must be a int"),
        ("train.amp=1", r"config key 'train\.amp' in --opts must be a word or true/false"),
        ("train=3", r"config key 'train' in --opts must be a mapping"),
        ("noequals", r"override 'noequals' must look like key=value"),
    ],
)
def test_bad_override_names_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        method_config("semantic", overrides=[override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        method_config("semantic", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        method_config("semantic", bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="holds a list; expected a mapping"):
        method_config("semantic", listy)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("data:\n  roott: x\n")
    with pytest.raises(ConfigError, match=rf"unknown config key 'data\.roott' in {unknown}"):
        method_config("semantic", unknown)


def test_every_shipped_config_loads():
    from pathlib import Path

    from seg_ext.config import read_yaml
    from seg_ext.models import SEMANTIC_MODELS

    root = Path(__file__).resolve().parents[1] / "configs"
    semantic = sorted((root / "semantic").glob("*.yaml"))
    instance = sorted((root / "instance").glob("*.yaml"))
    assert semantic and instance
    for path in semantic:
        assert method_config("semantic", path)["model"]["name"] in SEMANTIC_MODELS
    for path in instance:
        method = read_yaml(path)["method"]
        cfg = method_config(method, path)
        assert cfg["model"]["name"] == {"maskrcnn": "maskrcnn", "watershed": "dual_unet"}[method]
