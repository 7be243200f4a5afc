"""Fuzzing the two parsers every command line goes through: recipe overrides (``--set KEY=VALUE``)
and dataset specs (``--dataset``). Whatever the text, the answer is a value or the parser's own
one-line error (ConfigError / DatasetError), never another exception (which the CLI would print as
a traceback)."""
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval.datasets import DatasetError, ImageSplit, load_split
from training.config import DEFAULTS, ConfigError, load_recipe, parse_override

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _keys(d, prefix=""):
    for k, v in d.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _keys(v, prefix + k + ".")


KEYS = sorted(_keys(DEFAULTS))
key_text = st.one_of(st.sampled_from(KEYS), st.text(alphabet=string.ascii_letters + "._- ", max_size=20),
                     st.builds(lambda k, s: k + s, st.sampled_from(KEYS), st.sampled_from(["x", ".", "..", "s", ""])))
value_text = st.one_of(st.text(max_size=30), st.sampled_from(
    ["0.1", "-1", "1e400", ".nan", "[1, 2]", "{a: 1}", "true", "null", "~", "'quoted'", "[", "{", ": :",
     "!!python/name:os.system", "&a [*a]"]))


@SETTINGS
@given(key=key_text, value=value_text, sep=st.sampled_from(["=", "==", " = ", ""]))
def test_override_parser_answers_a_config_or_a_config_error(key, value, sep):
    item = key + sep + value
    try:
        node = parse_override(item)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(node, dict)
    try:
        cfg = load_recipe("simclr_fashion_mnist_cpu", [item])
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    # accepted: the key is a real leaf and the value landed there
    parts = key.strip().split(".")
    cur = cfg
    for p in parts:
        cur = cur[p]


@SETTINGS
@given(recipe=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=8)),
                           lambda inner: st.dictionaries(st.sampled_from(KEYS + ["lr", "x"]), inner, max_size=4)
                           | st.lists(inner, max_size=3), max_leaves=12))
def test_recipe_mapping_answers_a_config_or_a_config_error(recipe):
    try:
        cfg = load_recipe(recipe if isinstance(recipe, dict) else {"name": recipe})
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert set(cfg) == set(DEFAULTS)


spec_text = st.one_of(
    st.builds(lambda p, s: p + s, st.sampled_from(["", "npz:", "folder:", "NPZ:", "cifar", "fashion_mnist", "mnist",
                                                   "stl10", "svhn", "imagenet", "tiny-imagenet", "fmnist"]),
              st.text(max_size=40)),
    st.builds(lambda p, n: p + "x" * n, st.sampled_from(["npz:", "folder:"]), st.integers(200, 5000)))


@SETTINGS
@given(spec=spec_text, split=st.sampled_from(["train", "test", "val", "unlabeled", "extra", "bogus"]))
def test_dataset_spec_answers_a_split_or_a_dataset_error(spec, split, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the fuzzed specs point at an empty folder
    monkeypatch.setenv("SSLZOO_DATA", str(tmp_path / "data"))
    import eval.datasets as ds

    def no_idx(path):  # the system-wide Fashion-MNIST copy would load; reading 60k images is not the point
        raise DatasetError(f"{path}: not read in this test")

    monkeypatch.setattr(ds, "read_idx", no_idx)
    try:
        got = load_split(spec, split)
    except DatasetError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(got, ImageSplit)


@pytest.mark.parametrize("spec", ["npz:a\x00b", "folder:\x00", "npz:" + "n" * 5000, "folder:" + "d/" * 3000])
def test_unusable_paths_are_dataset_errors(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError):
        load_split(spec, "train")
