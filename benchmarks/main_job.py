"""Wall time of the README's main job (`sslzoo eval`, no arguments: the default model on Fashion-MNIST,
linear + kNN + few-shot, baselines pixels and random init) from a clean copy of the code with an empty
``$SSLZOO_HOME``: OLD code (a base commit, default the merge base with main) and NEW code (default
HEAD), each exported with ``git archive`` into a fresh folder and run in a fresh subprocess with its own
empty ``$SSLZOO_HOME``, side by side in one run; then the two tables compared cell by cell (max abs
difference, cells that moved by more than 0.2 points).

    python benchmarks/main_job.py                           # old and new, JSON to benchmarks/results/main_job.json
    python benchmarks/main_job.py --only new                # new only
    python benchmarks/main_job.py --old-result OLD.json     # reuse the old run of an earlier JSON

The data set is read where ``sslzoo eval`` finds it (``$SSLZOO_DATA`` or the Debian package). Other jobs on
the machine slow both runs: the load average before and after each run is in the JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine_info, print_machine, write_json  # noqa: E402

MOVE_LIMIT = 0.2  # points: the issue's bound on how far a table cell may move


def export(ref: str, dest: Path) -> str:
    """``git archive REF`` unpacked into ``dest`` (a clean clone's files); returns the full sha."""
    sha = subprocess.run(["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return sha


def timed_eval(code: Path, args: list[str], *, threads: int | None = None, timeout: float = 7200,
               python: str = sys.executable, home: str | None = None) -> dict:
    """``python -m training eval ARGS`` with ``code`` first on the path and a fresh empty ``$SSLZOO_HOME``;
    wall seconds, peak RSS of the child, exit status, the table rows (``--out table.json``) and the
    load average before and after. ``home``: an empty folder to use as ``$SSLZOO_HOME`` and keep (its cached
    features, e.g. to look into a table cell afterwards) instead of a temporary one."""
    if home is not None:
        Path(home).mkdir(parents=True, exist_ok=True)
        if any(Path(home).iterdir()):
            raise SystemExit(f"--home {home} is not empty: the run must start from an empty $SSLZOO_HOME")
    with (contextlib.nullcontext(home) if home is not None else tempfile.TemporaryDirectory(prefix="sslzoo-home-")) as home:
        env = dict(os.environ, SSLZOO_HOME=home, PYTHONPATH=str(code), PYTHONHASHSEED="0")
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        table = Path(home) / "table.json"
        cmd = [python, "-m", "training", "eval", *args, "--out", str(table)]
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        wall = time.perf_counter() - t0
        rows = json.loads(table.read_text()) if table.is_file() else None
    rss = None
    try:  # peak RSS of the largest child so far (Linux: KiB)
        import resource

        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    except Exception:
        pass
    return {"cmd": " ".join(cmd[1:]), "threads": threads, "wall_s": round(wall, 1), "returncode": proc.returncode,
            "max_child_rss_mb_so_far": rss, "loadavg_before": load0, "loadavg_after": os.getloadavg(),
            "rows": rows, "stdout_tail": out[-3000:], "stderr_tail": err[-3000:]}


def cells(rows) -> dict:
    """``(model, protocol) -> accuracy mean`` of a table's rows."""
    return {(r["model"], r["protocol"]): float(r["accuracy_mean"]) for r in rows or []}


def compare(old_rows, new_rows, limit: float = MOVE_LIMIT) -> dict:
    old, new = cells(old_rows), cells(new_rows)
    common = sorted(set(old) & set(new))
    diffs = {f"{m} | {p}": round(new[(m, p)] - old[(m, p)], 4) for m, p in common}
    return {"cells": len(common), "only_old": sorted(f"{m} | {p}" for m, p in set(old) - set(new)),
            "only_new": sorted(f"{m} | {p}" for m, p in set(new) - set(old)),
            "max_abs_diff": max((abs(v) for v in diffs.values()), default=None),
            "moved_over_limit": {k: v for k, v in diffs.items() if abs(v) > limit}, "diff": diffs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="OLD code: a commit (default: git merge-base HEAD main)")
    ap.add_argument("--new", default="HEAD", help="NEW code: a commit (default HEAD; commit your changes first)")
    ap.add_argument("--only", choices=("both", "new", "old"), default="both")
    ap.add_argument("--old-result", default=None, help="a JSON written earlier by this script: reuse its old run")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of both runs (default: torch's)")
    ap.add_argument("--args", default="", help="extra `sslzoo eval` arguments (default: none = the main job)")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--old-result-run", choices=("old", "new"), default="old",
                    help="which run of --old-result to reuse as OLD (new: e.g. the run behind the README's table)")
    ap.add_argument("--home", default=None, help="an empty folder kept as the NEW run's $SSLZOO_HOME (default: a "
                                                  "temporary one)")
    ap.add_argument("--out", default=str(RESULTS / "main_job.json"))
    args = ap.parse_args(argv)
    base = args.base or subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout.strip()
    machine = machine_info()
    print_machine(machine)
    eval_args = args.args.split()
    runs = {}
    if args.old_result:
        runs["old"] = json.loads(Path(args.old_result).read_text())["results"][0]["runs"][args.old_result_run]
        runs["old"]["reused_from"] = f"{args.old_result} ({args.old_result_run} run)"
    with tempfile.TemporaryDirectory(prefix="sslzoo-mainjob-") as tmp:
        todo = [w for w in ("old", "new") if args.only in ("both", w) and w not in runs]
        for which in todo:
            ref = base if which == "old" else args.new
            code = Path(tmp) / which
            sha = export(ref, code)
            print(f"{which}: {sha[:12]} -> sslzoo eval {' '.join(eval_args)}", flush=True)
            r = timed_eval(code, eval_args, threads=args.threads, timeout=args.timeout,
                           home=args.home if which == "new" else None)
            r["commit"] = sha
            runs[which] = r
            print(f"{which}: {r['wall_s']} s wall, exit {r['returncode']}, load {r['loadavg_before']} -> "
                  f"{r['loadavg_after']}", flush=True)
            if r["returncode"] != 0:
                print(r["stderr_tail"], file=sys.stderr)
    row = {"runs": runs}
    if "old" in runs and "new" in runs:
        row["speedup"] = round(runs["old"]["wall_s"] / runs["new"]["wall_s"], 2)
        row["compare"] = compare(runs["old"]["rows"], runs["new"]["rows"])
        c = row["compare"]
        print(f"old {runs['old']['wall_s']} s, new {runs['new']['wall_s']} s: {row['speedup']}x; "
              f"{c['cells']} cells, max |diff| {c['max_abs_diff']}, moved > {MOVE_LIMIT}: {c['moved_over_limit'] or 'none'}")
    if "new" in runs:
        row["new_floor_120s_met"] = runs["new"]["wall_s"] <= 120
    write_json(args.out, machine, args, [row])
    return 0 if all(r.get("returncode", 0) == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
