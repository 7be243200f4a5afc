import inspect

import pytest
import yaml

from training.config import (
    DEFAULTS,
    RECIPE_DIR,
    ConfigError,
    load_recipe,
    method_defaults,
    parse_override,
)
from training.methods import METHODS, SimCLR


def test_bundled_recipe_loads_and_overrides():
    cfg = load_recipe("simclr_fashion_mnist_cpu", ["optim.lr=0.1", "augment.scale=[0.3, 1.0]", "train.bf16=false"])
    assert cfg["optim"]["lr"] == 0.1
    assert cfg["augment"]["scale"] == [0.3, 1.0]
    assert cfg["train"]["bf16"] is False
    assert cfg["model"]["width"] == 16  # from the recipe, not the default
    assert cfg["optim"]["betas"] == DEFAULTS["optim"]["betas"]  # untouched default


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rat'.*"):
        load_recipe("simclr_fashion_mnist_cpu", ["optim.learning_rat=0.1"])
    with pytest.raises(ConfigError, match=r"did you mean 'temperature'"):
        load_recipe("simclr_fashion_mnist_cpu", ["method.temprature=0.1"])
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"optimm": {"lr": 1}}))
    with pytest.raises(ConfigError, match=r"did you mean 'optim'"):
        load_recipe(str(p))


def test_section_needs_fields_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="is a section"):
        load_recipe("simclr_fashion_mnist_cpu", ["optim=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("optim.lr")
    p = tmp_path / "bad.yaml"
    p.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(p))
    with pytest.raises(ConfigError, match="did you mean simclr_fashion_mnist_cpu"):
        load_recipe("simclr_fashion_mnist_cp")


def test_wrong_value_types_are_refused():
    with pytest.raises(ConfigError, match="'optim.lr' must be a number"):
        load_recipe("simclr_fashion_mnist_cpu", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="'train.bf16' must be true or false"):
        load_recipe("simclr_fashion_mnist_cpu", ["train.bf16=3"])


# ----------------------------------------------------------------------------- per-method fields, base recipes


def test_method_fields_are_the_method_keyword_arguments():
    sig = inspect.signature(SimCLR.__init__).parameters
    assert DEFAULTS["method"] == {"name": "simclr", **{k: p.default for k, p in sig.items()
                                                       if p.kind == p.KEYWORD_ONLY}}
    cfg = load_recipe("simclr_fashion_mnist_cpu", ["method.name=dcl", "method.tau_plus=0.05"])
    assert cfg["method"]["tau_plus"] == 0.05
    assert cfg["method"]["temperature"] == 0.2  # a field both methods have keeps the recipe's value
    assert cfg["method"]["clamp"] is True  # DCL's default
    assert "proj_bn" not in cfg["method"]  # SimCLR-only field dropped
    with pytest.raises(ConfigError, match=r"unknown config key 'method.tau_plus'"):
        load_recipe("simclr_fashion_mnist_cpu", ["method.tau_plus=0.1"])
    with pytest.raises(ConfigError, match=r"unknown method 'byl'; did you mean 'byol'"):
        load_recipe("simclr_fashion_mnist_cpu", ["method.name=byl"])
    with pytest.raises(ConfigError, match=r"'method.symmetric' must be true or false"):
        load_recipe("mocov2_fashion_mnist_cpu", ["method.symmetric=3"])
    for name in METHODS:
        assert method_defaults(name)  # every method exposes its hyperparameters as keyword arguments


def test_base_recipes_merge_and_refuse_cycles(tmp_path):
    cfg = load_recipe("dissl_resnet50_d8192_e800_m8")
    assert cfg["model"]["expand_dim"] == 8192 and cfg["optim"]["epochs"] == 800
    assert cfg["augment"]["small_crops"] == 6 and cfg["augment"]["size"] == 224
    assert cfg["optim"]["batch_size"] == 2560 and cfg["method"]["beta"] == 0.6  # from the base
    cissl = load_recipe("cissl_tinyimagenet")  # base is a DISSL recipe: the method section is replaced
    assert cissl["method"]["name"] == "cissl" and "n_clusters" not in cissl["method"]
    assert cissl["optim"]["name"] == "adam" and cissl["optim"]["batch_size"] == 512
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a\noptim: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: simclr_fashion_mnist_cpu\noptim: {lr: 0.1}\n")
    c = load_recipe(str(tmp_path / "c.yaml"))
    assert c["optim"]["lr"] == 0.1 and c["model"]["width"] == 16


def test_every_recipe_loads():
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert len(names) >= 30
    for n in names:
        cfg = load_recipe(n)
        assert cfg["method"]["name"] in METHODS, n
    for m in METHODS:  # a small CPU recipe per method
        assert f"{m}_fashion_mnist_cpu" in names


@pytest.mark.parametrize("item, words", [
    ("optim.batch_size=1.5", "whole number"),
    ("optim.lr=.nan", "finite"),    # YAML's NaN
    ("optim.lr=-.inf", "finite"),
    ("optim.lr=nan", "a number"),   # plain 'nan' is a string in YAML
    ("optim.epochs=2.5", "whole number"),
])
def test_non_finite_or_fractional_counts_are_refused(item, words):
    from training.config import ConfigError, load_recipe
    with pytest.raises(ConfigError, match=words):
        load_recipe("simclr_fashion_mnist_cpu", [item])


def test_whole_float_for_an_integer_key_becomes_an_int():
    from training.config import load_recipe
    cfg = load_recipe("simclr_fashion_mnist_cpu", ["optim.batch_size=256.0", "optim.warmup_epochs=0.5"])
    assert cfg["optim"]["batch_size"] == 256 and type(cfg["optim"]["batch_size"]) is int
    assert cfg["optim"]["warmup_epochs"] == 0.5
