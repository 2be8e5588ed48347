"""The core library never imports Ray, MLflow or Optuna: they belong to the edge adapters (and the
CLI), which import them inside the functions that use them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "impress"
FRAMEWORKS = ("ray", "mlflow", "optuna")

# In one fresh interpreter: import every module in turn and note what each one brought in.
PROBE = """
import importlib, json, sys
seen = {}
for name in sys.argv[1:]:
    importlib.import_module(f"impress.{name}")
    seen[name] = sorted({m.split(".")[0] for m in sys.modules} & set(FRAMEWORKS))
print(json.dumps(seen))
"""


def test_no_module_of_the_package_imports_ray_mlflow_or_optuna():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")
    assert {"trainer", "layers", "tuner", "tracking", "cli"} <= set(modules)
    code = f"FRAMEWORKS = {FRAMEWORKS!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {m: [] for m in modules}, {m: v for m, v in seen.items() if v}
