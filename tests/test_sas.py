"""SAS subsets (training/datacentric/sas.py, training/datacentric/subsets.py): sizes per class, determinism, the two
objectives against their definitions, latent-class partitions, index files incl. the released
pickle format, and the `sslzoo subset` / `data.subset` command lines."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from training.datacentric import sas
from training.cli import main
from training.datacentric.sas import SASSubsetDataset
from training.datacentric.subsets import (CustomSubsetDataset, RandomSubsetDataset, SubsetError, class_budget,
                                          read_subset_file, write_subset_file, write_subset_files)
from zoo.backbones import build_resnet
from zoo.io import save_folder
from zoo.preprocess import Preprocess



def _blobs(n_per=20, k=3, d=8, seed=0):
    g = np.random.default_rng(seed)
    centres = g.normal(0, 4, (k, d))
    x = np.concatenate([centres[c] + g.normal(0, 1, (n_per, d)) for c in range(k)])
    return torch.as_tensor(x, dtype=torch.float32), np.repeat(np.arange(k), n_per)


def _tiny_images(n=48, size=12, seed=0):
    g = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = g.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    x[:, : size // 2] //= (y[:, None, None, None] + 1).astype(np.uint8)
    return x, y


def _proxy(size=12):
    torch.manual_seed(0)
    m = build_resnet("resnet18", stem="cifar", maxpool=False, width=4, in_chans=1).eval()
    m.preprocess = Preprocess(resize=size, crop=size, mean=(0.5,), std=(0.5,), in_chans=1)
    return m


def _embeddings(n, d=6, seed=0):
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double(), dim=1)
    return sas.ProxyEmbeddings(z, torch.ones(n, dtype=torch.float64), 0)


# ----------------------------------------------------------------------------- sizes and determinism

def test_random_subset_sizes_per_class_and_seed_determinism():
    part = {0: list(range(0, 10)), 1: list(range(10, 110)), 2: list(range(110, 117))}
    ds = list(range(117))
    a = RandomSubsetDataset(ds, 0.29, partition=part, seed=3)
    kept = [sum(i in set(part[c]) for i in a.subset_indices) for c in part]
    assert kept == [2, 29, 2]  # floor(|c| f), with 0.29 * 100 -> 29 (plain int() gives 28)
    assert len(a) == 33 and a[0] == a.subset_indices[0]
    assert RandomSubsetDataset(ds, 0.29, partition=part, seed=3).subset_indices == a.subset_indices
    assert RandomSubsetDataset(ds, 0.29, partition=part, seed=4).subset_indices != a.subset_indices
    plain = RandomSubsetDataset(ds, 0.5, seed=0)
    assert len(plain) == 58 and len(set(plain.subset_indices)) == 58
    assert class_budget(100, 0.29) == 29 and class_budget(7, 0.99) == 6
    with pytest.raises(SubsetError, match="fraction"):
        RandomSubsetDataset(ds, 1.5)


def test_sas_subset_sizes_per_class_and_bit_identical_for_a_seed():
    x, y = _tiny_images(n=32)
    imgs = torch.as_tensor(x).permute(0, 3, 1, 2)
    part = sas.label_partition(y)
    run = [SASSubsetDataset(imgs, 0.5, part, _proxy(), n_augment=2, seed=s, device="cpu", batch_size=32)
           for s in (7, 7, 8)]
    assert run[0].subset_indices == run[1].subset_indices
    assert torch.equal(run[0].embeddings.mean, run[1].embeddings.mean)  # bit for bit
    assert not torch.equal(run[0].embeddings.mean, run[2].embeddings.mean)  # the seed drives the augmentations
    for objective in ("upstream", "paper"):
        for f in (0.25, 0.5, 0.75):
            ds = SASSubsetDataset(imgs, f, part, objective=objective, embeddings=run[0].embeddings)
            for c, idx in part.items():
                assert sum(i in set(idx) for i in ds.subset_indices) == int(len(idx) * f)
            assert len(ds) == sum(int(len(v) * f) for v in part.values())


def test_expected_similarity_with_identity_augmentation_equals_plain_embedding():
    from training.augmentation import ViewAugment

    x, _ = _tiny_images(n=16)
    imgs = torch.as_tensor(x).permute(0, 3, 1, 2)
    ident = ViewAugment(size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                        mean=(0.5,), std=(0.5,), version=2)
    plain = sas.proxy_embeddings(_proxy(), imgs, n_augment=0)
    many = sas.proxy_embeddings(_proxy(), imgs, n_augment=3, augment=ident)
    assert torch.allclose(many.mean, plain.mean, atol=1e-5)
    assert torch.allclose(many.self_sim, torch.ones(16, dtype=torch.float64), atol=1e-5)
    rnd = sas.proxy_embeddings(_proxy(), imgs, n_augment=4, seed=1)
    assert (rnd.self_sim <= 1 + 1e-9).all() and (rnd.mean.norm(dim=1) <= 1 + 1e-9).all()


# ----------------------------------------------------------------------------- the two objectives

def _released_greedy_order(D: np.ndarray) -> list:
    """The released greedy as seeds.md 2.2 describes it: gain(i) = D[i].sum() - D[S, i].sum(), the
    best gain first (ties: larger index), then ROW i of D is zeroed."""
    D = D.copy()
    left, order = set(range(len(D))), []
    while left:
        gains = {i: D[i].sum() - D[order, i].sum() for i in left}
        best = max(left, key=lambda i: (gains[i], i))
        order.append(best)
        left.remove(best)
        D[best, :] = 0
    return order


def test_upstream_objective_is_the_released_greedy_ranking():
    for seed in range(3):
        e = _embeddings(30, seed=seed)
        S = (e.mean @ e.mean.t()).numpy()
        S = S * (S >= 0)
        got = sas.rank_class(e.mean, e.self_sim, 30, "upstream")
        assert list(got) == _released_greedy_order(S)


def test_paper_objective_is_the_greedy_of_its_definition_and_drops_duplicates():
    e = _embeddings(12, seed=1)
    S = (e.mean @ e.mean.t()).numpy()
    S = S * (S >= 0)

    def F(sel):  # sum_{i in S} sum_j s_ij - sum_{i<j in S} s_ij
        sel = list(sel)
        return S[sel].sum() - (S[np.ix_(sel, sel)].sum() - np.trace(S[np.ix_(sel, sel)])) / 2

    chosen = []
    for _ in range(6):
        gains = {i: F(chosen + [i]) - F(chosen) for i in range(12) if i not in chosen}
        chosen.append(max(gains, key=lambda i: (round(gains[i], 9), i)))
    assert list(sas.rank_class(e.mean, e.self_sim, 6, "paper")) == chosen
    # a duplicated example (0, 1) and a near pair (2, 3): the row-sum ranking keeps both copies, the
    # paper objective, once one copy is kept, prefers the pair (its redundancy with the copy is 0.3)
    b = (0.3, 0.91 ** 0.5, 0.0)
    cy = (0.9 - 0.09) / b[1]
    m = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], b, (0.3, cy, (1 - 0.09 - cy * cy) ** 0.5)], dtype=torch.float64)
    ones = torch.ones(4, dtype=torch.float64)
    assert sas.rank_class(m, ones, 2, "upstream").tolist() == [1, 0]
    assert sas.rank_class(m, ones, 2, "paper").tolist() == [1, 3]
    with pytest.raises(SubsetError, match="unknown SAS objective"):
        sas.rank_class(m, ones, 2, "greedy")


# ----------------------------------------------------------------------------- latent classes

def test_zero_shot_partition_assigns_each_example_not_each_batch():
    img = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 0.2, 1]])
    txt = torch.eye(3)
    assert sas.zero_shot_partition(img, txt) == {0: [0, 2], 1: [1], 2: [3, 4]}
    # per-batch prediction tensors (what upstream's loop collected) are flattened, not used as keys
    part = sas.partition_from_preds([torch.tensor([0, 1]), torch.tensor([0, 2, 2])])
    assert part == {0: [0, 2], 1: [1], 2: [3, 4]} and all(type(k) is int for k in part)


def test_zero_shot_without_a_local_clip_model_is_one_line():
    import importlib.util

    if importlib.util.find_spec("open_clip") or importlib.util.find_spec("clip"):
        pytest.skip("a CLIP package is installed here")
    with pytest.raises(SubsetError) as e:
        sas.clip_zero_shot_partition(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["a", "b"])
    assert "CLIP-style model" in str(e.value) and "\n" not in str(e.value)


def test_kmeans_and_few_label_linear_partitions():
    x, y = _blobs()
    p1 = sas.kmeans_partition(x, 3, seed=0)
    assert p1 == sas.kmeans_partition(x, 3, seed=0)
    assert sorted(sorted(v) for v in p1.values()) == [list(range(c * 20, c * 20 + 20)) for c in range(3)]
    lab = sas.few_labels(y, per_class=2, seed=0)
    assert len(lab) == 6
    p2 = sas.linear_partition(x, lab, y[lab], 3)
    assert p2 == sas.label_partition(y)
    assert sas.label_partition([0, -1, 1, 0]) == {0: [0, 3], 1: [2]}  # generated (-1) left out


# ----------------------------------------------------------------------------- index files

def test_released_pickle_list_and_dict_formats_are_read(tmp_path):
    idx = [5, 3, 9, 0]
    (tmp_path / "cifar10-0.05-sas-subset-indices.pkl").write_bytes(pickle.dumps(idx, protocol=4))
    assert read_subset_file(tmp_path / "cifar10-0.05-sas-subset-indices.pkl").indices == idx
    (tmp_path / "cl-core-idx.pkl").write_bytes(pickle.dumps({"indices": idx}, protocol=4))
    assert read_subset_file(tmp_path / "cl-core-idx.pkl").indices == idx
    (tmp_path / "t.pkl").write_bytes(pickle.dumps(tuple(idx), protocol=2))
    assert read_subset_file(tmp_path / "t.pkl").indices == idx


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickles_that_build_objects_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps([1, _Evil(marker)]))
    with pytest.raises(SubsetError, match="only plain lists") as e:
        read_subset_file(tmp_path / "evil.pkl")
    assert not marker.exists() and "\n" not in str(e.value)
    (tmp_path / "np.pkl").write_bytes(pickle.dumps(np.arange(4)))  # the numpy-style rand-balanced file
    with pytest.raises(SubsetError, match="numpy"):
        read_subset_file(tmp_path / "np.pkl")
    for bad, msg in ([1, True], "bool"), ([1, -2], "negative"), ([1, 1], "more than once"), ("abc", "str"):
        (tmp_path / "b.pkl").write_bytes(pickle.dumps(bad))
        with pytest.raises(SubsetError, match=msg):
            read_subset_file(tmp_path / "b.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(SubsetError, match="readable pickle"):
        read_subset_file(tmp_path / "junk.pkl")


def test_index_files_round_trip_pickle_and_json(tmp_path):
    idx = [7, 1, 4]
    pkl, js = write_subset_files(tmp_path / "sub", idx, {"method": "sas", "seed": 0})
    assert pickle.loads(pkl.read_bytes()) == idx  # what upstream's pickle.load gives back
    assert read_subset_file(pkl).indices == idx
    back = read_subset_file(js)
    assert back.indices == idx and back.meta["method"] == "sas" and back.meta["size"] == 3
    assert json.loads(js.read_text())["format"] == "sslzoo.subset"
    ds = CustomSubsetDataset(list(range(10)), js)
    assert len(ds) == 3 and ds[0] == 7 and ds.subset_fraction == pytest.approx(0.3)
    ds.save_to_file(tmp_path / "again.pkl")
    assert (tmp_path / "again.pkl").read_bytes() == pkl.read_bytes()
    with pytest.raises(SubsetError, match=r"\.pkl"):
        write_subset_file(tmp_path / "x.txt", idx)
    with pytest.raises(SubsetError, match="out of range"):
        CustomSubsetDataset(list(range(5)), idx)


# ----------------------------------------------------------------------------- command lines

@pytest.fixture
def tiny_data(tmp_path):
    x, y = _tiny_images(n=64)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, train_image=x, train_label=y, test_image=x[:16], test_label=y[:16])
    m = _proxy()
    save_folder(m.state_dict(), {"name": "tiny", "arch": {"arch": "resnet18", "stem": "cifar", "maxpool": False,
                                                          "width": 4, "in_chans": 1},
                                 "preprocess": m.preprocess.to_dict(), "feature_dim": 32}, tmp_path / "proxy")
    return npz, tmp_path / "proxy"


def test_sslzoo_subset_writes_deterministic_files_and_train_uses_them(tiny_data, tmp_path, capsys):
    npz, proxy = tiny_data
    common = ["subset", "--dataset", f"npz:{npz}", "--fraction", "0.5", "--proxy", str(proxy), "--n-augment", "2",
              "--num-classes", "4"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b")]) == 0
    a, b = (tmp_path / "a.pkl").read_bytes(), (tmp_path / "b.pkl").read_bytes()
    assert a == b
    meta = read_subset_file(tmp_path / "a.json").meta
    assert meta["method"] == "sas" and meta["partition"] == "kmeans" and meta["dataset_size"] == 64
    assert sum(meta["kept_per_class"].values()) == len(pickle.loads(a))
    assert main(["subset", "--dataset", f"npz:{npz}", "--fraction", "0.25", "--method", "random", "--partition",
                 "labels", "--out", str(tmp_path / "r.json")]) == 0
    r = read_subset_file(tmp_path / "r.json")
    assert len(r.indices) == 16 and r.meta["method"] == "random-balanced"

    from training.config import load_recipe
    from training.trainer import Trainer

    sets = [f"data.dataset=npz:{npz}", "model.width=4", "model.in_chans=1", "augment.size=12",
            "optim.batch_size=8", f"data.subset={tmp_path / 'a.pkl'}"]
    t = Trainer(load_recipe("simclr_fashion_mnist_cpu", sets), tmp_path / "run", device="cpu")
    x, y = t.load_data()
    kept = pickle.loads(a)
    assert len(x) == len(kept) >= 28 and torch.equal(y, torch.as_tensor(_tiny_images(n=64)[1])[kept])


def test_train_refuses_out_of_range_subset_in_one_line(tiny_data, tmp_path, capsys):
    npz, _ = tiny_data
    (tmp_path / "big.pkl").write_bytes(pickle.dumps([0, 3, 64, 70]))
    rc = main(["train", "simclr_fashion_mnist_cpu", "--set", f"data.dataset=npz:{npz}", "--set", "model.in_chans=1",
               "--set", f"data.subset={tmp_path / 'big.pkl'}", "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "index 64 is out of range" in err and "64 images" in err
    assert not (tmp_path / "run").exists()
