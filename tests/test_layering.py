"""The layers of the package, enforced.

core       the library: streams, backbones, methods, the trainer, inference, metrics, bit counts
adapters   studies on Ray Tune and Optuna, MLflow tracking and reading, reports, the cluster, the CLI

No module imports Ray, MLflow or Optuna when it is imported (the adapters import them inside the
functions that use them), and no core module imports an adapter at all."""

from __future__ import annotations

import ast
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
    modules = _modules()
    assert {"trainer", "layers", "tuner", "tracking", "cli"} <= set(modules)
    code = f"FRAMEWORKS = {FRAMEWORKS!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {m: [] for m in modules}, {m: v for m, v in seen.items() if v}


ADAPTERS = {
    "cli", "run_flags", "data_cli", "confirm", "tuner", "tune_callbacks", "study", "study_log", "study_outcome",
    "tracking", "records", "report", "tables", "plots", "pagemap", "jobs", "trials",
}  # fmt: skip


def _modules() -> list[str]:
    """Every module of the package, dotted below `impress` (`trainer`, `methods.batche`)."""
    paths = (p.relative_to(PACKAGE).with_suffix("") for p in PACKAGE.rglob("*.py"))
    names = (".".join(p.parts[:-1] if p.name == "__init__" else p.parts) for p in paths if p.name != "__main__")
    return sorted(n for n in names if n)  # not the package itself


def _imports(module: str) -> set[str]:
    """The package's modules that `module` imports anywhere in its text (functions included)."""
    path = PACKAGE.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "impress":
            names = [node.module.removeprefix("impress").lstrip(".")] if node.module != "impress" else []
            out |= {n for n in names if n} or {a.name for a in node.names}
    return out


def test_no_core_module_imports_an_adapter():
    modules = _modules()
    assert {"methods", "methods.batche", "trainer", "tuner"} <= set(modules) and ADAPTERS <= set(modules)
    core = [m for m in modules if m not in ADAPTERS]
    wrong = {m: sorted(_imports(m) & ADAPTERS) for m in core}
    assert not {m: v for m, v in wrong.items() if v}, wrong
