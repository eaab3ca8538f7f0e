"""Tests for distid.config: loading, overrides, errors, hashing, CLI args."""
import argparse
import json
import re

import pytest

from distid.config import (
    Config, ConfigError, add_config_args, config_hash, timestamped_dir,
    load_config, to_dict, validate,
)

TOML = """
name = "custom"
[model]
name = "mlp"
[data]
dataset = "fashion-mnist"
[train]
method = "full"
lr = 1
epochs = 0.5
[subspace]
d = 1000
[dist]
strategy = "none"
backend = "gloo"
"""


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.name == "default"
    assert cfg.subspace.d == 750 and cfg.subspace.projection == "fastfood"
    assert cfg.dist.strategy == "ddp" and cfg.data.dataset == "mnist"


def test_load_file(tmp_path):
    cfg = load_config(write(tmp_path, TOML))
    assert cfg.name == "custom"
    assert cfg.data.dataset == "fashion-mnist"
    assert cfg.train.method == "full" and cfg.subspace.d == 1000
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted for float
    assert cfg.train.epochs == 0.5
    assert cfg.train.optimizer == "adam"  # untouched default
    assert cfg.dist.backend == "gloo"


def test_name_from_stem(tmp_path):
    cfg = load_config(write(tmp_path, "[subspace]\nd = 5\n", "small_run.toml"))
    assert cfg.name == "small_run"


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, TOML), [
        "subspace.d=2000", "train.lr=0.5", "subspace.projection=dense",
        'data.root="/tmp/x"', "dist.timeout_s=30", "train.epochs=2", "name=run1",
    ])
    assert cfg.subspace.d == 2000
    assert cfg.train.lr == 0.5
    assert cfg.subspace.projection == "dense"  # unquoted string
    assert cfg.data.root == "/tmp/x"
    assert cfg.dist.timeout_s == 30.0 and isinstance(cfg.dist.timeout_s, float)
    assert cfg.train.epochs == 2.0
    assert cfg.name == "run1"


def test_bool_value_rejected_for_int():
    with pytest.raises(ConfigError, match=r"subspace\.d.*expected int.*True"):
        load_config(None, ["subspace.d=true"])


def test_override_missing_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["subspace.d"])


def test_unknown_key_in_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("unknown key 'train.lrr'")) as e:
        load_config(write(tmp_path, "[train]\nlrr = 0.1\n"))
    assert "did you mean 'train.lr'?" in str(e.value)


def test_unknown_key_in_override():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.optimiser=sgd"])
    msg = str(e.value)
    assert "unknown key 'train.optimiser'" in msg
    assert "did you mean 'train.optimizer'?" in msg


def test_unknown_key_no_close_match_lists_section_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["dist.zzzzzzzz=1"])
    assert "valid keys: dist.strategy, dist.backend, dist.timeout_s" in str(e.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[trian]\nlr = 0.1\n"))
    msg = str(e.value)
    assert "'trian.lr'" in msg and "no section 'trian'" in msg
    assert "did you mean 'train.lr'?" in msg
    with pytest.raises(ConfigError, match="unknown key 'optim'"):
        load_config(write(tmp_path, "[optim]\n"))
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(write(tmp_path, "train = 3\n"))


@pytest.mark.parametrize("text, pattern", [
    ("[subspace]\nd = 1.5\n", r"subspace\.d.*expected int.*1\.5"),
    ("[train]\nlr = \"fast\"\n", r"train\.lr.*expected float.*'fast'"),
    ("[train]\nmethod = 3.5\n", r"train\.method.*expected str.*3\.5"),
    ("[train]\nmethod = 3\n", r"train\.method must be one of .*got '3'"),  # an int is read as a name
    ("[train]\nepochs = true\n", r"train\.epochs.*expected float.*True"),
])
def test_type_errors(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize("override, pattern", [
    ("train.method=half", r"train\.method must be one of 'full', 'subspace', 'lora', 'vera', 'fourierft', 'unilora'; got 'half'"),
    ("subspace.projection=gauss", r"subspace\.projection must be one of 'dense', 'sparse', 'fastfood'"),
    ("train.optimizer=rmsprop", r"train\.optimizer must be one of 'adam', 'sgd'"),
    ("dist.strategy=zero3", r"dist\.strategy must be one of 'ddp', 'fsdp', 'local_sgd', 'streaming_diloco', 'sparse_loco', 'demo', 'none' or a class named "
                            r"by import path, 'package.module:Class'; got 'zero3'"),
    ("dist.backend=mpi", r"dist\.backend must be one of 'auto', 'gloo', 'nccl'"),
    ("data.dataset=cifar", r"data\.dataset must be one of 'mnist', 'fashion-mnist'"),
    ("subspace.d=0", r"subspace\.d must be >= 1"),
    ("train.lr=0", r"train\.lr must be > 0"),
    ("train.global_batch=0", r"train\.global_batch must be >= 1"),
    ("train.epochs=0", r"train\.epochs must be > 0"),
])
def test_validation_errors(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_validation_steps_replace_epochs():
    cfg = load_config(None, ["train.epochs=0", "train.steps=10"])
    assert cfg.train.steps == 10
    validate(cfg)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_to_dict_and_hash():
    a, b = load_config(None), load_config(None)
    d = to_dict(a)
    assert d["subspace"]["d"] == 750 and d["name"] == "default"
    assert json.loads(json.dumps(d)) == d
    h = config_hash(a)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert h == config_hash(b)
    assert config_hash(load_config(None, ["subspace.d=751"])) != h
    assert config_hash(load_config(None, ["train.lr=0.002"])) != h


def test_add_config_args():
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--set", "a.b=1", "--set", "c.d=2"])
    assert args.overrides == ["a.b=1", "c.d=2"]
    assert args.config is None and args.out is None
    args = parser.parse_args(["--config", "configs/x.toml", "--out", "runs/x"])
    assert args.overrides == [] and args.config == "configs/x.toml" and args.out == "runs/x"


def test_default_out_dir():
    cfg = load_config(None, ["name=exp"])
    assert re.fullmatch(r"runs/exp-\d{8}-\d{6}", timestamped_dir(cfg.name))


def test_bare_leaf_names_get_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_config(None, ["lr=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'subspace.d'"):
        load_config(None, ["d=100"])


def test_choices_match_the_registries():
    from distid.config import CHOICES
    from distid.models import MODELS
    from distid.subspace import PROJECTIONS

    assert set(CHOICES["model.name"]) == set(MODELS)
    assert set(CHOICES["subspace.projection"]) == set(PROJECTIONS)
