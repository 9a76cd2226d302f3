"Notebook jobs: the stages' own progress (training steps and loss, generation) reaches the terminal of `finetune-kit run`."
import os, re
from helpers import ROOT, JOB, param_args

WORKBOOK = ROOT/"nbs/workbooks/finetune.ipynb"

def test_run_streams_training_and_generation_progress(tmp_path, run_cli):
    args = param_args({**JOB, "max_steps": 3, "runs_dir": tmp_path, "run_id": "job"})
    r = run_cli("run", WORKBOOK, *args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr.replace("\r", "\n")
    assert re.search(r"^train: +100%\|.*\| 3/3 ", err, re.M), err[-3000:]       # the Trainer's steps, as a text bar
    assert re.search(r"^step 1: loss \d", err, re.M)                             # one line per log: step and loss
    for system in ("base", "tuned"):  # generation bars (they are cleared when done, so their last state is not certain)
        assert re.search(rf"^{system}: +\d+%\|.*\| \d/6 ", err, re.M), system
    assert "training records" in r.stdout and r.stdout.strip().endswith(f"done: {tmp_path/'job/notebook.ipynb'}")
    assert "Executing" not in err  # papermill's cell counter is off while the kernel's own output streams
