"""The layout holds itself: no script imports a script, no package imports a script (import-linter checks the
layers between packages, see .importlinter; it cannot take single-file scripts)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("data_pipeline", "train_bot", "evaluate_bot", "automate_training")
PACKAGES = ("botcore", "datafeed", "rl_env", "deepscalper", "agents", "evaluation", "training", "trading",
            "automation")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


def test_no_script_or_package_imports_a_script():
    sources = [REPO / f"{s}.py" for s in SCRIPTS]
    sources += [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    offenders = {str(p.relative_to(REPO)): sorted(_imported_modules(p) & set(SCRIPTS)) for p in sources}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_a_script_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from train_bot import main\n    return main\n")
    assert _imported_modules(bad) & set(SCRIPTS) == {"train_bot"}


def test_every_package_is_under_an_import_linter_contract():
    config = (REPO / ".importlinter").read_text(encoding="utf-8")
    for pkg in PACKAGES:
        assert f"\n    {pkg}\n" in config or f" {pkg} |" in config or f"| {pkg}\n" in config, pkg
