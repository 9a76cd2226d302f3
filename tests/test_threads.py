"""Threads that fit the machine: the usable cores from faked affinity and cgroup files, the order in which the thread
count is chosen, the setting's way from the config to torch's threads in a stage, the command line's early
application, and the shared-cores warning (one line on stderr, and in manifest.json / metrics.json)."""
import json, os
from pathlib import Path
import pytest
import torch
import finetune_kit.threads as T
from finetune_kit.threads import (THREADS_ENV, cgroup_cpus, choose_threads, shared_cores_warning, thread_env,
                                  use_threads, usable_cores)

from helpers import CLS, TRAIN_SMALL, lines, tiny_config

ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV, "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "LOCAL_WORLD_SIZE",
            "RANK")

@pytest.fixture
def thread_state(monkeypatch):
    "The thread variables and torch's thread count as they were, restored after the test (the code under test sets them)."
    for k in ENV_KEYS: monkeypatch.delenv(k, raising=False)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)

def cgroups(tmp_path, files:dict, proc:str) -> dict:
    "A fake cgroup mount (`files`: path under it -> text) and a fake /proc/self/cgroup; the arguments for `usable_cores`."
    for rel, text in files.items():
        p = tmp_path/"fs"/rel; p.parent.mkdir(parents=True, exist_ok=True); p.write_text(text)
    (tmp_path/"proc").write_text(proc)
    return {"root": tmp_path/"fs", "proc": tmp_path/"proc"}

V2 = "0::/user.slice/job.scope\n"
# layout, files under the mount, /proc/self/cgroup, affinity CPUs -> usable cores
CASES = [
    ("v2, no quota", {"cgroup.controllers": "cpu", "user.slice/job.scope/cpu.max": "max 100000\n"}, V2, 64, 64),
    ("v2, quota on the process's own cgroup", {"cgroup.controllers": "cpu", "user.slice/job.scope/cpu.max": "200000 100000\n"}, V2, 64, 2),
    ("v2, quota on a parent slice", {"cgroup.controllers": "cpu", "user.slice/cpu.max": "300000 100000\n",
                                      "user.slice/job.scope/cpu.max": "max 100000\n"}, V2, 64, 3),
    ("v2, the tighter of two", {"cgroup.controllers": "cpu", "user.slice/cpu.max": "150000 100000\n",
                                "user.slice/job.scope/cpu.max": "400000 100000\n"}, V2, 64, 1),
    ("v2, container namespace (path /)", {"cgroup.controllers": "cpu", "cpu.max": "400000 100000\n"}, "0::/\n", 64, 4),
    ("v2, fractional quota rounds down", {"cgroup.controllers": "cpu", "cpu.max": "250000 100000\n"}, "0::/\n", 8, 2),
    ("v2, below one core", {"cgroup.controllers": "cpu", "cpu.max": "20000 100000\n"}, "0::/\n", 8, 1),
    ("v2, affinity tighter than quota", {"cgroup.controllers": "cpu", "cpu.max": "800000 100000\n"}, "0::/\n", 3, 3),
    ("v1, quota", {"cpu,cpuacct/docker/a/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/docker/a/cpu.cfs_period_us": "100000\n"},
     "5:cpu,cpuacct:/docker/a\n0::/docker/a\n", 16, 3),
    ("v1, -1 is no quota", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n", 16, 16),
    ("hybrid: v1 cpu, unified without cpu", {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "50000\n",
                                              "unified/cgroup.controllers": ""}, "3:cpu:/\n0::/\n", 16, 2),
    ("unreadable quota", {"cgroup.controllers": "cpu", "cpu.max": "lots\n"}, "0::/\n", 4, 4),
    ("no cgroup files", {}, "0::/\n", 6, 6),
]

@pytest.mark.parametrize("files,proc,cpus,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_usable_cores_from_affinity_and_cgroup_quota(tmp_path, monkeypatch, files, proc, cpus, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(os, "cpu_count", lambda: 128)  # the machine's count: never the answer here
    assert usable_cores(**cgroups(tmp_path, files, proc)) == want

def test_no_proc_cgroup_file_means_no_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert cgroup_cpus(tmp_path, tmp_path/"missing") is None and usable_cores(tmp_path, tmp_path/"missing") == 3

def test_the_default_reads_this_process():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))

@pytest.mark.parametrize("threads,env,cores,want", [
    (3, {"OMP_NUM_THREADS": "1"}, 8, (3, "the threads setting")),
    (None, {"OMP_NUM_THREADS": "2"}, 8, (2, "OMP_NUM_THREADS")),
    (None, {"OMP_NUM_THREADS": "0"}, 8, (8, "the usable cores (CPU affinity and cgroup quota)")),
    (None, {}, 8, (8, "the usable cores (CPU affinity and cgroup quota)")),
    (None, {"LOCAL_WORLD_SIZE": "3"}, 8, (2, "8 usable cores shared by 3 local processes")),
    (None, {"LOCAL_WORLD_SIZE": "4"}, 2, (1, "2 usable cores shared by 4 local processes")),
    (None, {"OMP_NUM_THREADS": "2", THREADS_ENV: "2 the threads setting"}, 8, (2, "the threads setting")),  # a parent's
    (None, {"OMP_NUM_THREADS": "3", THREADS_ENV: "2 the threads setting"}, 8, (3, "OMP_NUM_THREADS")),  # changed since
])
def test_the_thread_count_and_why(threads, env, cores, want):
    assert choose_threads(threads, env, cores) == want

def test_sweep_trials_share_the_runners_threads(thread_state):
    from finetune_kit.sweeps import worker_env
    thread_state.setattr(T, "usable_cores", lambda *a: 6)
    assert [worker_env(0, p, [])["OMP_NUM_THREADS"] for p in (1, 2, 4, 8)] == ["6", "3", "1", "1"]
    thread_state.setenv("OMP_NUM_THREADS", "1")
    assert worker_env(0, 2, [])["OMP_NUM_THREADS"] == "1"
    assert "CUDA_VISIBLE_DEVICES" in worker_env(0, 2, ["0", "1"]) and "OMP_NUM_THREADS" not in worker_env(0, 2, ["0"])

@pytest.mark.parametrize("threads,cores,others,fit", [
    (2, 2, 0.3, None), (2, 2, 0.6, 1), (2, 2, 2.0, 1), (4, 8, 3.9, None), (8, 8, 3.4, 5), (1, 2, 6.0, None), (2, 2, 4.0, 1),
])
def test_shared_cores_warning(threads, cores, others, fit):
    w = shared_cores_warning(threads, cores, others)
    if fit is None: assert w is None
    else: assert f"-p threads {fit}" in w and f"this job's {threads} threads" in w and "\n" not in w

def test_use_threads_sets_torch_and_the_childrens_environment(thread_state, capsys):
    thread_state.setattr(T, "load_average", lambda: 0.0)
    plan = use_threads(1, "passive")
    assert torch.get_num_threads() == 1 and plan["threads"] == 1 and plan["why"] == "the threads setting"
    assert {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")} == \
        {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    assert "applies to child processes" in plan["note"]  # torch was loaded before the setting
    assert plan["warning"] is None and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="omp_wait_policy"): thread_env(1, "spin")

def test_use_threads_warns_once_on_stderr_when_the_cores_are_shared(thread_state, capsys):
    thread_state.setattr(T, "usable_cores", lambda *a: 2)
    thread_state.setattr(T, "load_average", lambda: 4.2)
    thread_state.setattr(T, "_own_load", lambda: 0.1)
    plan = use_threads(2, warn=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: the cores are shared: 1-minute load average 4.2 on 2")
    assert "-p threads 1" in err and plan["warning"] in err and (plan["load_1m"], plan["others_load"]) == (4.2, 4.1)
    use_threads(2, warn=False)
    thread_state.setenv("RANK", "1")  # another rank of a distributed run: the main process says it
    use_threads(2)
    assert capsys.readouterr().err == ""
    thread_state.setattr(T, "load_average", lambda: 1.5)
    thread_state.setattr(T, "_own_load", lambda: 1.2)  # the load is mostly this process's own (a kernel that trained)
    assert use_threads(2)["warning"] is None

def test_the_setting_reaches_torch_in_training_and_the_manifest(tmp_path, thread_state, capfd):
    "train() with `threads` 1, started where OMP_NUM_THREADS says 2 and torch runs 2: every step runs on 1 thread."
    from transformers import TrainerCallback
    from finetune_kit.train import train
    thread_state.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    thread_state.setattr(T, "load_average", lambda: 9.0)
    thread_state.setattr(T, "shared_cores_warning", lambda *a: "the cores are shared: (test)")
    seen = []
    class Threads(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw): seen.append(torch.get_num_threads())
    cfg = tiny_config(TRAIN_SMALL, max_steps=2, save_steps=100, threads=1, runs_dir=str(tmp_path))
    res = train(cfg, callbacks=[Threads()])
    assert seen == [1, 1] and os.environ["OMP_NUM_THREADS"] == "1"
    m = json.loads((res.run_dir/"manifest.json").read_text())["threads"]
    assert (m["threads"], m["why"], m["omp_wait_policy"]) == (1, "the threads setting", "runtime")
    assert "load_1m" not in m  # a moment's load would make two runs of one config differ (test_same_manifest...)
    assert m["warning"] == "the cores are shared: (test)"
    assert capfd.readouterr().err.count("warning: the cores are shared: (test)") == 1
    assert json.loads((res.run_dir/"env.json").read_text())["torch_threads"] == 1

def test_evaluation_takes_the_setting_and_records_it(tmp_path, thread_state):
    from finetune_kit.evaluate import evaluate
    torch.set_num_threads(2)
    recs = lines(CLS/"test.jsonl")
    res = evaluate(tiny_config(threads=1, bootstrap_samples=20, review_samples=0), CLS, out_dir=tmp_path/"eval",
                   outputs={"base": ["sport"] * len(recs)}, progress=False)
    assert torch.get_num_threads() == 1 and res.metrics["threads"]["threads"] == 1
    assert json.loads((tmp_path/"eval/metrics.json").read_text())["threads"]["why"] == "the threads setting"

def test_a_command_that_computes_applies_the_setting_before_its_body(thread_state):
    "The command line applies threads and the wait policy as it starts (before a stage imports torch); a bad target still fails."
    from typer.testing import CliRunner
    from finetune_kit.cli import app
    thread_state.setenv("OMP_NUM_THREADS", "2")
    r = CliRunner().invoke(app, ["evaluate", "run", "/no/such/folder", "-p", "threads", "1", "-p", "omp_wait_policy",
                                 "passive"])
    assert r.exit_code == 2 and "no such run folder" in r.output
    assert (os.environ["OMP_NUM_THREADS"], os.environ["OMP_WAIT_POLICY"], os.environ[THREADS_ENV]) == \
        ("1", "PASSIVE", "1 the threads setting")
    thread_state.setenv("OMP_NUM_THREADS", "2")
    r = CliRunner().invoke(app, ["review", "make", "/no/such/folder"])  # reads no threads: leaves them alone
    assert os.environ["OMP_NUM_THREADS"] == "2"
    r = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert "threads INTEGER|none" in r.output and "omp_wait_policy [runtime|passive]" in r.output

def test_bad_thread_settings_are_one_line():
    from finetune_kit.settings import make_config
    from finetune_kit.config import ConfigError
    with pytest.raises(ConfigError, match="threads must be >= 1"): make_config({"threads": 0}, settings=False)
    with pytest.raises(ConfigError, match="'omp_wait_policy' must be one of runtime, passive"):
        make_config({"omp_wait_policy": "spin"}, settings=False)

def test_a_busy_process_beside_takes_a_core_from_the_count_and_gives_it_back_when_it_ends():
    "ThreadFit on the real CPU counters: a spinning child process is measured as about one busy core; the count drops by one, then comes back."
    import subprocess, sys, time
    cores = usable_cores()
    if cores < 2: pytest.skip("one usable core: nothing to refit")
    got = []
    fit = T.ThreadFit(cores, cores, every_s=1.0, set_threads=got.append)
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"])
    try:
        time.sleep(2.0)
        line = fit.check()
    finally: spin.kill(); spin.wait()
    assert line is not None and got == [cores - 1] and fit.changes[0]["others"] >= 0.6, (line, fit.changes)
    assert f"threads {cores} -> {cores - 1}: other processes kept" in line
    time.sleep(2.0)
    assert fit.check() is not None and got == [cores - 1, cores] and fit.threads == cores

def test_a_training_run_whose_count_nothing_set_follows_the_load_and_records_it(tmp_path, thread_state, capfd):
    "With threads unset the run refits between steps (others faked at one busy core of two) and manifest.json lists the change; a set count stays."
    import time
    from finetune_kit.train import train
    start = time.monotonic()
    def counters():  # all the time: one core busy with this process, one with another
        e = time.monotonic() - start
        return 2.0 * e, 1.0 * e
    thread_state.setattr(T, "usable_cores", lambda *a, **k: 2)
    thread_state.setattr(T, "cpu_counters", counters)
    thread_state.setattr(T, "REFIT_EVERY_S", 0.0)  # check at every step
    from transformers import TrainerCallback
    seen = []
    class Threads(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw): seen.append(torch.get_num_threads())
    res = train(tiny_config(TRAIN_SMALL, max_steps=3, save_steps=100, runs_dir=str(tmp_path)), callbacks=[Threads()])
    m = json.loads((res.run_dir/"manifest.json").read_text())["threads"]
    assert (m["threads"], m["follows_load"], [c["threads"] for c in m["changes"]]) == (2, True, [1]), m
    assert "step 1: threads 2 -> 1: other processes kept 1.0 of 2 usable cores busy" in capfd.readouterr().err
    assert seen == [2, 1, 1] and torch.get_num_threads() == 2  # refitted after step 1; the start's count after training
    res = train(tiny_config(TRAIN_SMALL, max_steps=2, save_steps=100, threads=2, runs_dir=str(tmp_path)))
    m = json.loads((res.run_dir/"manifest.json").read_text())["threads"]
    assert (m["follows_load"], "changes" in m, torch.get_num_threads()) == (False, False, 2)
