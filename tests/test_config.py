import pytest
import yaml

from training.config import DEFAULTS, ConfigError, load_recipe, parse_override


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
