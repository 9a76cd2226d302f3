"""Sweeps across machines: runner processes sharing one Optuna study on a real PostgreSQL server (a throwaway cluster
started here from Debian's `postgresql` binaries) never repeat a trial, and a raced cap or grid point goes to the
lower trial number."""
import json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import pytest
from conftest import starts
from helpers import ROOT, free_port
from sweep_workbook import fake_workbook, sweep_file
from finetune_kit.sweeps import load_sweep, open_study, search_space, grid_points
from finetune_kit.sweeps import runner as sweep_runner

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # Optuna's note on asking outside optimize

def _pg_bin() -> Path|None:
    "The folder of `initdb` and `pg_ctl`: Debian's /usr/lib/postgresql/<version>/bin, else the PATH."
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True):
        if (d/"initdb").exists() and (d/"pg_ctl").exists(): return d
    exe = shutil.which("pg_ctl")
    return Path(exe).parent if exe and (Path(exe).parent/"initdb").exists() else None

@pytest.fixture(scope="module")
@starts("a PostgreSQL server")
def pg_url():
    "A PostgreSQL server in a temporary folder for this module's tests: its URL (user postgres, no password)."
    pg = _pg_bin()
    if pg is None: pytest.skip("no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql (.ci/run does)")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed: pip install -e '.[postgres]'")
    base = Path(tempfile.mkdtemp(prefix="ftk-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root: run them as Debian's postgres user
        import pwd
        try: pw = pwd.getpwnam("postgres")
        except KeyError: pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base/"data", free_port()
    run = lambda *a: subprocess.run([*as_user, *map(str, a)], capture_output=True, text=True, timeout=120)
    r = run(pg/"initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    assert r.returncode == 0, r.stdout + r.stderr
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    r = run(pg/"pg_ctl", "-D", data, "-o", opts, "-l", base/"server.log", "-w", "-t", "60", "start")
    assert r.returncode == 0, r.stdout + r.stderr + (base/"server.log").read_text(errors="replace")
    try: yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg/"pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)

def _runner(f:Path, sweep_dir:Path, url:str) -> subprocess.Popen:
    "One runner process, as on its own machine: `finetune-kit sweep` with its own folder and the shared storage."
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "finetune_kit.cli", "sweep", str(f), "--dir", str(sweep_dir),
                             "--storage", url], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

def _two_runners(tmp_path, body:dict, url:str):
    "Run the sweep `body` with two runner processes sharing `url`; the finished study's trials, and their outputs."
    f = sweep_file(tmp_path, fake_workbook(tmp_path), body)
    procs = [_runner(f, tmp_path/f"host{i}", url) for i in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs): assert p.returncode == 0, out
    import optuna
    trials = optuna.load_study(study_name=body["name"], storage=url.replace("postgresql://", "postgresql+psycopg://"))
    return trials.get_trials(deepcopy=False), outs

def _check_no_repeats(trials, outs, n:int) -> list:
    "The complete trials: `n` of them, distinct numbers and parameters, from both runners; nothing else ran."
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == n, [(t.number, t.state.name, t.params, t.user_attrs.get("stale")) for t in trials]
    assert len({t.number for t in done}) == n
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == n  # no configuration ran twice
    runners = {t.user_attrs["runner_pid"] for t in done}
    assert len(runners) == 2, f"one runner did all the trials:\n{outs[0]}\n{outs[1]}"
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    for t in done:  # each trial's own process wrote its folder, in its runner's sweep folder
        summary = json.loads((Path(t.user_attrs["run_dir"])/"summary.json").read_text())
        assert t.value == pytest.approx(t.params["learning_rate"] * 1000 + t.params["lora_r"])
        assert summary["pid"] != t.user_attrs["runner_pid"]
    return done

def test_two_runners_share_a_grid_on_postgres_and_run_each_point_once(tmp_path, pg_url):
    body = {"name": "pg-grid", "method": "grid",
            "parameters": {"lora_r": {"values": [4, 8]}, "learning_rate": {"values": [1e-3, 2e-3]}}}
    trials, outs = _two_runners(tmp_path, body, pg_url)
    done = _check_no_repeats(trials, outs, 4)
    spec = load_sweep(body)
    assert sorted(json.dumps(t.params, sort_keys=True) for t in done) == sorted(
        json.dumps(p, sort_keys=True) for p in grid_points(spec))

def test_two_runners_share_a_random_sweep_on_postgres_up_to_the_cap(tmp_path, pg_url):
    body = {"name": "pg-random", "method": "random", "run_cap": 4,
            "parameters": {"lora_r": {"values": [4, 8]},
                           "learning_rate": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}}}
    trials, outs = _two_runners(tmp_path, body, pg_url)
    _check_no_repeats(trials, outs, 4)  # the cap holds across runners, and their draws differ

# --- the rule that settles races: the lower trial number wins (any storage; SQLite here) ----------------------

def test_a_raced_grid_point_and_cap_go_to_the_lower_trial_number(tmp_path):
    spec = load_sweep({"method": "grid", "metric": {"name": "train/loss"},
                       "parameters": {"lora_r": {"values": [4, 8]}}}, name="race")
    a, b = open_study(spec, sweep_dir=tmp_path), open_study(spec, sweep_dir=tmp_path)  # two runners, one storage
    grid, space = grid_points(spec), search_space(spec)
    for s in (a, b): s.enqueue_trial(grid[0])  # both saw the point free and queued it
    ta, tb = a.ask(space), b.ask(space)
    assert ta.params == tb.params == grid[0] and ta.number < tb.number
    assert sweep_runner._give_way(a, ta, None, grid) is None
    assert sweep_runner._give_way(b, tb, None, grid) == "another runner holds this grid point"
    assert sweep_runner._give_way(b, tb, 1, grid).startswith("trial cap 1 reached")
    tc = b.ask(space)
    assert sweep_runner._give_way(b, tc, 3, None) is None  # random points never clash; two trials below the cap

def test_a_dead_runner_on_another_host_is_found_by_its_heartbeat(tmp_path, pg_url, monkeypatch):
    "A trial whose runner on another machine stopped beating is failed after the grace period and queued again."
    from finetune_kit.sweeps import study as sweep_study, recover_stale, heartbeat
    monkeypatch.setattr(sweep_study, "GRACE_S", 2)
    spec = load_sweep({"method": "grid", "metric": {"name": "train/loss"},
                       "parameters": {"lora_r": {"values": [4, 8]}}}, name="pg-heartbeat")
    study = open_study(spec, storage=pg_url)
    t = study.ask(search_space(spec))
    t.set_user_attr("host", "another-machine")  # not this host's: only the heartbeat can tell it is gone
    assert heartbeat(study, t.number)
    assert recover_stale(study, say=lambda *a: None) == [] and study.trials[t.number].state.name == "RUNNING"
    time.sleep(3)
    recover_stale(study, say=lambda *a: None)
    trials = study.get_trials(deepcopy=False)
    assert trials[t.number].state.name == "FAIL"
    assert trials[-1].state.name == "WAITING" and trials[-1].user_attrs == {"retry_of": t.number}
