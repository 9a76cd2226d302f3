"The package's layers, as pyproject.toml's import-linter contracts state them, and no imports of private names."
import ast, os, shutil, subprocess, sys, tomllib
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/"finetune_kit"

def contracts() -> list[dict]:
    return tomllib.loads((ROOT/"pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]

def lint(cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent/"lint-imports"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)

def test_the_layer_contracts_are_kept():
    from importlinter import configuration
    from importlinter.application.use_cases import lint_imports
    configuration.configure()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        assert lint_imports(cache_dir=None, no_logo=True), "lint-imports: a contract is broken (run `lint-imports`)"
    finally: os.chdir(cwd)

def test_every_module_sits_in_a_layer():
    "A new top-level module or package must be given its place in the layers (import-linter checks only those listed)."
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    listed = {m.strip().removeprefix("finetune_kit.") for layer in layers for m in layer.split("|")}
    here = {p.stem for p in PKG.glob("*.py") if not p.name.startswith("_")} | \
           {p.name for p in PKG.iterdir() if (p/"__init__.py").is_file()}
    assert here - listed == set(), f"modules in no layer of pyproject.toml's [tool.importlinter]: {here - listed}"
    assert listed - here == set(), f"layers naming no module: {listed - here}"

def _module(path:Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

def private_imports(pkg:Path=PKG) -> list[str]:
    "`file:line imports module._name` for every import of another module's private name in the package."
    out = []
    for path in sorted(pkg.rglob("*.py")):
        if path.name == "_modidx.py": continue
        me = _module(path)
        base = me if path.name == "__init__.py" else me.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom): continue
            mod = ".".join(base.split(".")[:len(base.split(".")) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            if not mod.startswith("finetune_kit") or mod == me: continue
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod}.{a.name}")
    return out

def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []

def test_the_private_name_check_can_fail(tmp_path):
    "The check above finds a private import when one is there (relative and absolute forms)."
    pkg = tmp_path/"finetune_kit"
    (pkg/"sub").mkdir(parents=True)
    (pkg/"__init__.py").write_text("")
    (pkg/"a.py").write_text("_x = 1\n")
    (pkg/"sub"/"__init__.py").write_text("")
    (pkg/"sub"/"b.py").write_text("from ..a import _x\ndef f():\n    from finetune_kit.a import _x\n")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try: found = private_imports(pkg)
    finally: ROOT = root
    assert found == ["finetune_kit/sub/b.py:1 imports finetune_kit.a._x", "finetune_kit/sub/b.py:3 imports finetune_kit.a._x"]

@pytest.mark.slow
def test_a_planted_upward_import_inside_a_function_breaks_the_build(tmp_path):
    "The lowest module importing the command line, inside a function, is an upward import and a cycle: lint-imports fails."
    shutil.copytree(PKG, tmp_path/"finetune_kit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT/"pyproject.toml", tmp_path)
    with (tmp_path/"finetune_kit"/"files.py").open("a") as f:
        f.write("\ndef _planted():\n    from finetune_kit.cli import app\n    return app\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = lint(tmp_path, env)
    assert r.returncode != 0, r.stdout
    assert "finetune_kit.files -> finetune_kit.cli" in r.stdout
    assert "BROKEN" in r.stdout
    assert lint(ROOT).returncode == 0  # the real package, by the same command
