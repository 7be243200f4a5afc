"""benchmarks/input_pipeline.py runs end to end on a tiny generated tree and writes its JSON (no timing
claims: the ratios of a smoke run only have to exist)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_input_pipeline_benchmark_smoke(tmp_path):
    out = tmp_path / "ip.json"
    bench = _load_benchmark("input_pipeline")
    bench.main(["--images", "20", "--sizes", "60,90", "--workers", "0", "--batch", "4", "--batches", "1",
                "--warmup", "1", "--repeats", "1", "--profile", "--profile-images", "4",
                "--cache", str(tmp_path / "cache"), "--out", str(out)])
    res = json.loads(out.read_text())
    assert [r["recipe"] for r in res["results"]] == ["simclr", "m6"]
    for r in res["results"]:
        assert r["ratio_per_cpu_s"] > 0 and r["files"]["images"] == r["torchvision"]["images"] == 4
        shapes = {"simclr": [[4, 3, 224, 224]] * 2, "m6": [[4, 3, 160, 160]] * 2 + [[4, 3, 96, 96]] * 4}
        assert r["files"]["views"] == r["torchvision"]["views"] == shapes[r["recipe"]]
        prof = r["profile_ms_per_image"]
        assert {"crop_boxes", "decode_and_crop_file_source", "post_crop_ops_batched_file_source",
                "torchvision_views"} <= set(prof)
