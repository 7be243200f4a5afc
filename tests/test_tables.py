"""Tests for eval/tables.py."""
import io
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.tables import REQUIRED, make_table, render, write_table  # noqa: E402

SHA_A = "0123456789ab" + "c" * 52
SHA_B = "fedcba987654" + "3" * 52
SHA_DIGITS = "1234567890" * 6 + "1234"  # all digits: must not be parsed as a number anywhere


def rows():
    return [
        dict(model="resnet50-simclr", weights_sha256=SHA_A, dataset="cifar10", protocol="few-shot k=10",
             accuracy_mean=61.23456789012345, accuracy_std=1.2345678901234, seeds="0,1,2", n=3, shots=10),
        dict(model="resnet50-simclr", weights_sha256=SHA_A, dataset="cifar10", protocol="linear",
             accuracy_mean=89.1234567890123, accuracy_std=float("nan"), seeds="0", n=1, l2=1e-4),
        dict(model="resnet50-byol", weights_sha256=SHA_B, dataset="cifar10", protocol="few-shot k=5",
             accuracy_mean=55.5, accuracy_std=0.31, seeds=[0, 1, 2], n=3, shots=5),
        dict(model="vit-dino", weights_sha256=SHA_DIGITS, dataset="cifar10", protocol="knn k=20 T=0.07",
             accuracy_mean=90.0, accuracy_std=None, seeds=0, n=1),
        dict(model="resnet50-byol", weights_sha256=SHA_B, dataset="cifar10", protocol="few-shot k=100",
             accuracy_mean=80.0, accuracy_std=0.5, seeds="0,1,2", n=3, shots=100),
        dict(model="resnet50-byol", weights_sha256=SHA_B, dataset="cifar10", protocol="few-shot k=10",
             accuracy_mean=62.0, accuracy_std=0.4, seeds="0,1,2", n=3, shots=10),
    ]


def test_make_table_columns_and_types():
    df = make_table(rows())
    assert list(df.columns[: len(REQUIRED)]) == list(REQUIRED)
    assert list(df.columns[len(REQUIRED):]) == ["shots", "l2"]
    assert df["seeds"].tolist().count("0,1,2") == 4 and "0" in df["seeds"].tolist()
    assert math.isnan(df.loc[df.protocol == "linear", "accuracy_std"].item())
    assert math.isnan(df.loc[df.protocol.str.startswith("knn"), "accuracy_std"].item())
    assert df["n"].dtype == "int64"


def test_make_table_sorts_naturally_and_stably():
    df = make_table(rows())
    assert df["protocol"].tolist() == ["few-shot k=5", "few-shot k=10", "few-shot k=10", "few-shot k=100",
                                       "knn k=20 T=0.07", "linear"]
    # Within a protocol, sorted by model.
    assert df.loc[df.protocol == "few-shot k=10", "model"].tolist() == ["resnet50-byol", "resnet50-simclr"]
    # Fully equal sort keys keep their input order (stable).
    twins = [dict(r, model="m", protocol="linear", dataset="d", note=i) for i, r in enumerate(rows())]
    assert make_table(twins)["note"].tolist() == list(range(6))
    assert make_table(twins[::-1])["note"].tolist() == list(range(6))[::-1]


def test_make_table_rejects_missing_columns():
    bad = rows()[0]
    del bad["weights_sha256"]
    with pytest.raises(ValueError, match="row 0 is missing weights_sha256"):
        make_table([bad])


def test_render_markdown():
    md = render(make_table(rows()), "md")
    lines = md.strip().splitlines()
    assert lines[0].startswith("|") and set(lines[1]) <= set("|-: ")  # github pipe table
    assert len(lines) == 2 + 6
    assert "±" in md
    assert "61.23 ± 1.23" in md and "55.50 ± 0.31" in md
    linear = next(line for line in lines if "linear" in line)
    assert "89.12" in linear and "±" not in linear and "nan" not in linear.lower()
    knn = next(line for line in lines if "knn" in line)
    assert "90.00" in knn and "±" not in knn
    # sha256 shortened to 12 characters, never shown in full, digits kept verbatim.
    assert "0123456789ab" in md and SHA_A not in md and SHA_A[:13] not in md
    assert "123456789012" in knn and "e+" not in knn
    # Other hash columns are shortened too.
    md2 = render(make_table([dict(rows()[0], dataset_sha256="ab" * 32)]), "md")
    assert "abababababab" in md2 and "ab" * 7 not in md2


def test_render_csv_round_trips():
    df = make_table(rows())
    text = render(df, "csv")
    back = pd.read_csv(io.StringIO(text), dtype={"weights_sha256": str, "seeds": str})
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["accuracy_mean"].tolist() == df["accuracy_mean"].tolist()  # full precision, exact
    assert SHA_A in text and SHA_DIGITS in text


def test_render_json_loads():
    df = make_table(rows())
    recs = json.loads(render(df, "json"))
    assert isinstance(recs, list) and len(recs) == 6
    assert [r["protocol"] for r in recs] == df["protocol"].tolist()
    linear = next(r for r in recs if r["protocol"] == "linear")
    assert linear["accuracy_mean"] == 89.1234567890123 and linear["accuracy_std"] is None
    assert linear["weights_sha256"] == SHA_A and linear["seeds"] == "0" and linear["n"] == 1
    assert linear["l2"] == 1e-4 and linear["shots"] is None
    knn = next(r for r in recs if r["protocol"].startswith("knn"))
    assert knn["weights_sha256"] == SHA_DIGITS
    few = next(r for r in recs if r["protocol"] == "few-shot k=5")
    assert few["shots"] == 5 and isinstance(few["shots"], int)  # integer parameter stays an integer


def test_render_unknown_format():
    with pytest.raises(ValueError, match=r"unknown table format 'html'") as exc:
        render(make_table(rows()), "html")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name,fmt", [("results.md", "md"), ("results.csv", "csv"), ("results.json", "json")])
def test_write_table_atomic(tmp_path, name, fmt):
    df = make_table(rows())
    out = write_table(df, tmp_path / "sub" / name)
    assert out == tmp_path / "sub" / name
    assert out.read_text(encoding="utf-8") == render(df, fmt)
    assert os.listdir(tmp_path / "sub") == [name]  # no temp files left behind
    # Overwrite in place.
    write_table(make_table(rows()[:2]), out)
    assert out.read_text(encoding="utf-8") == render(make_table(rows()[:2]), fmt)
    assert os.listdir(tmp_path / "sub") == [name]


def test_write_table_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    path.write_text("old\n")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)  # the atomic write (zoo.io) renames with os.replace
    with pytest.raises(OSError, match="disk on fire"):
        write_table(make_table(rows()), path)
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["t.csv"]


def test_write_table_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"\.md, \.csv or \.json"):
        write_table(make_table(rows()), tmp_path / "t.txt")
    assert os.listdir(tmp_path) == []


def test_render_summary_one_row_per_model_one_column_per_protocol():
    from eval.tables import render_summary

    rows = [dict(model=m, weights_sha256="ab" * 32, dataset="d", protocol=p, accuracy_mean=a, accuracy_std=s,
                 seeds="0", n=1)
            for m, p, a, s in [("m1", "few-shot k=10", 70.0, 1.5), ("m1", "linear", 90.0, None),
                               ("m2", "linear", 80.0, None), ("m1", "few-shot k=5", 60.0, 2.0),
                               ("m1", "knn k=20 T=0.07", 85.0, None)]]
    out = render_summary(make_table(rows)).splitlines()
    header = [c.strip() for c in out[0].strip("|").split("|")]
    assert header == ["model", "sha256", "dataset", "linear", "knn k=20 T=0.07", "few-shot k=5", "few-shot k=10"]
    m1 = [c.strip() for c in out[2].strip("|").split("|")] if "m1" in out[2] else [
        c.strip() for c in out[3].strip("|").split("|")]
    assert m1 == ["m1", "ab" * 6, "d", "90.00", "85.00", "60.00 ± 2.00", "70.00 ± 1.50"]
    assert len(out) == 4  # header, rule, 2 models


# ----------------------------------------------------------------------------- leaderboard helpers


def test_reported_protocol_matching():
    from eval.tables import protocol_matches

    assert protocol_matches("linear", "linear (L2 chosen on a 10% val split of train, refit)")
    assert protocol_matches("knn k=20 T=0.07", "knn k=20 T=0.07")
    assert protocol_matches("few-shot k=10", "few-shot k=10 (mean of seeds 0,1,2)")
    assert not protocol_matches("few-shot k=1", "few-shot k=10 (mean of seeds 0,1,2)")
    assert not protocol_matches("knn k=20 T=0.07", "knn k=200 T=0.1")
    assert not protocol_matches("linear", "linear-ish")


def test_attach_reported_uses_the_registry_metrics():
    from eval.tables import attach_reported
    from zoo.registry import REGISTRY

    name, rec = next((n, r) for n, r in REGISTRY.items() if r.metrics)
    m = rec.metrics[0]
    label = m.protocol.split(" (")[0]
    row = dict(rows()[1], model=name, dataset=m.dataset, protocol=label)
    out = attach_reported([row, rows()[0]])
    assert out[0]["reported"] == m.value and out[0]["reported_protocol"] == f"{m.protocol} ({m.split})"
    assert out[0]["reported_source"] == m.source
    assert out[1]["reported"] is None and out[1]["reported_protocol"] is None  # not a registry model
    other = attach_reported([dict(row, dataset="some-other-dataset")])[0]
    assert other["reported"] is None


def test_render_leaderboard_one_row_per_model_dataset_protocol():
    from eval.tables import attach_reported, render_leaderboard

    df = make_table(attach_reported([dict(r, code_version="0.1.0+gabc") for r in rows()]))
    md = render_leaderboard(df).splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header == ["model", "sha256", "dataset", "protocol", "accuracy (%)", "seeds", "reported (%)",
                      "reported protocol", "code"]
    assert len(md) == 2 + len(rows())
    few = next(ln for ln in md if "resnet50-simclr" in ln and "few-shot k=10" in ln)
    cells = [c.strip() for c in few.strip("|").split("|")]
    assert cells == ["resnet50-simclr", SHA_A[:12], "cifar10", "few-shot k=10", "61.23 ± 1.23", "0,1,2", "", "",
                     "0.1.0+gabc"]
