"""Fixtures shared by the test files, and the `slow` mark, decided here by what a test uses.

`scripts/test.sh --fast` runs `pytest -m "not slow"`, which must start no Python process (the console script,
papermill, a Jupyter kernel, torchrun, `python -m ...`), no server, no database, and load no SmolLM2. So:

- a test is slow when it is marked `@pytest.mark.slow`, or when it uses, directly or through other fixtures, a
  fixture decorated with `@starts("what")` (such as `run_cli` below): it is marked here, at collection;
- when a run deselects slow tests, a guard fails every other test that starts a Python program, node or PostgreSQL,
  listens on a socket, or loads SmolLM2, with one line telling its author to mark it slow. Quick system tools
  (git, uname, nvidia-smi, a shell-script stand-in) are not counted.
"""
import os, re, shutil, socket
from pathlib import Path
import pytest
from helpers import ROOT, run_cli as _run_cli

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the settings the suite was written for (no recipe, 400 records cut to 300 characters): tests/fixtures/settings.ini
os.environ.setdefault("FINETUNE_KIT_SETTINGS", str(Path(__file__).resolve().parent/"fixtures"/"settings.ini"))


def starts(what:str):
    "Decorate a fixture (below `@pytest.fixture`) that starts `what`: every test that uses it is marked slow."
    def deco(f):
        f.starts = what
        return f
    return deco


@pytest.fixture(scope="session")
def root(): return ROOT

@pytest.fixture(scope="session")
def tiny_model_dir():
    "The cached tiny random chat model (built once per machine)."
    from finetune_kit.testing import tiny_model_path
    return tiny_model_path()

@pytest.fixture(scope="session")
@starts("the finetune-kit console script")
def run_cli():
    "`run_cli(*args, cwd=, timeout=, env=...)`: run the `finetune-kit` console script, get its CompletedProcess."
    return _run_cli

@pytest.fixture
def one_torch_thread(monkeypatch):
    "The tiny model's matrices are too small to share: one thread is faster, and immune to a busy machine."
    import torch
    for k in ("MKL_NUM_THREADS", "FINETUNE_KIT_THREADS"): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what a stage's `threads.use_threads` reads when `threads` is not set
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- slow by what a test uses ------------------------------------------------------------------------------------

def _started_by_fixtures(item) -> str|None:
    "The first fixture (with what it starts) among those `item` uses that is decorated `@starts`, else None."
    defs = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fd in (defs.name2fixturedefs.get(name, ()) if defs else ()):
            if what := getattr(fd.func, "starts", None): return f"{name} ({what})"
    return None

@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") is None and (why := _started_by_fixtures(item)):
            item.add_marker(pytest.mark.slow(reason=f"uses {why}"))


# --- the guard of runs without slow tests -----------------------------------------------------------------------

_VIOLATION = pytest.StashKey[str]()
_guarded = {"item": None}  # the unmarked test being set up or run
_PYTHON = re.compile(r"python[\d.]*$")
_HEAVY = {"node": "starts node", "initdb": "starts PostgreSQL", "pg_ctl": "starts PostgreSQL",
          "postgres": "starts PostgreSQL", "postmaster": "starts PostgreSQL"}

def _excludes_slow(config) -> bool:
    return bool(re.search(r"\bnot\s+slow\b", config.option.markexpr or ""))

def _stop(what:str):
    "Fail the guarded test: it does `what`, which only slow tests may do."
    item = _guarded["item"]
    if item is None: return
    msg = (f"{item.nodeid} {what}, but is not marked slow: add @pytest.mark.slow (or use a fixture decorated "
           f"@starts): `pytest -m 'not slow'` starts no Python process, kernel, server or database")
    item.stash[_VIOLATION] = msg
    pytest.fail(msg, pytrace=False)

def _program(argv, path=None) -> str|None:
    "What starting `argv` (found at `path`) means, when it is heavy: a Python program, node or PostgreSQL."
    arg0 = os.fsdecode(argv[0]) if argv else ""
    exe = os.fsdecode(path) if path else (arg0 if os.sep in arg0 else shutil.which(arg0) or arg0)
    name = Path(exe).name
    words = " ".join(os.fsdecode(a) for a in argv[:3])
    if name in _HEAVY: return f"{_HEAVY[name]} ({words})"
    if _PYTHON.match(name): return "starts a Jupyter kernel" if "ipykernel" in words else f"starts Python ({words})"
    try:
        with open(exe, "rb") as f: first = f.readline(200)
    except OSError: return None
    return f"starts the Python program {name} ({words})" if first.startswith(b"#!") and b"python" in first else None

def _install_guard(mp:pytest.MonkeyPatch):
    import _posixsubprocess, subprocess
    real_fork_exec = _posixsubprocess.fork_exec
    def fork_exec(argv, executables, *a, **kw):
        if _guarded["item"] is not None and (what := _program(argv, executables[0] if executables else None)):
            _stop(what)
        return real_fork_exec(argv, executables, *a, **kw)
    mp.setattr(_posixsubprocess, "fork_exec", fork_exec)  # multiprocessing's spawn
    if getattr(subprocess, "_fork_exec", None) is not None: mp.setattr(subprocess, "_fork_exec", fork_exec)
    mp.setattr(subprocess, "_USE_POSIX_SPAWN", False)  # every program goes through fork_exec
    for fn in ("posix_spawn", "posix_spawnp"):
        real = getattr(os, fn)
        def spawn(path, argv, *a, _real=real, **kw):
            if _guarded["item"] is not None and (what := _program(argv, path)): _stop(what)
            return _real(path, argv, *a, **kw)
        mp.setattr(os, fn, spawn)
    real_listen = socket.socket.listen
    def listen(self, *a):
        if _guarded["item"] is not None: _stop(f"listens on a socket ({self.getsockname()}): it runs a server")
        return real_listen(self, *a)
    mp.setattr(socket.socket, "listen", listen)
    from transformers import PreTrainedModel
    real_load = PreTrainedModel.from_pretrained.__func__
    def from_pretrained(cls, path, *a, **kw):
        if _guarded["item"] is not None and "smollm2" in str(path).lower(): _stop(f"loads SmolLM2 ({path})")
        return real_load(cls, path, *a, **kw)
    mp.setattr(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))

@pytest.fixture(scope="session", autouse=True)
def _guard_runs_without_slow_tests(request):
    "Install the guard for the session when it deselects slow tests."
    if not _excludes_slow(request.config):
        yield; return
    mp = pytest.MonkeyPatch()
    _install_guard(mp)
    yield
    mp.undo()

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _guarded["item"] = item if item.get_closest_marker("slow") is None and _excludes_slow(item.config) else None
    try: return (yield)
    finally: _guarded["item"] = None

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    "A guarded test that caught the guard's failure still fails, with the guard's line."
    rep = yield
    msg = item.stash.get(_VIOLATION, None)
    if msg and call.when in ("setup", "call") and rep.passed:
        rep.outcome, rep.longrepr = "failed", msg
    return rep
