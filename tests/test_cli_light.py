"""`sslzoo --help` and `sslzoo eval --help` answer without importing torch (the parser is built from light
modules; a command imports its heavy modules when it runs)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from training.cli import main
try:
    main({argv!r})
except SystemExit as e:
    assert e.code == 0, e.code
heavy = [m for m in ("torch", "torchvision", "numpy", "pandas", "timm", "transformers") if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["train", "--help"], ["convert", "--help"],
                                  ["finetune", "--help"]])
def test_help_does_not_import_torch(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "usage: sslzoo" in out.stdout
    heavy = out.stdout.rsplit("HEAVY=", 1)[1].strip()
    assert "torch" not in heavy.split(","), f"sslzoo {' '.join(argv)} imported {heavy}"


def test_eval_help_lists_finetune_options():
    out = subprocess.run([sys.executable, "-m", "training", "eval", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "--finetune-epochs" in out.stdout and "finetune" in out.stdout
