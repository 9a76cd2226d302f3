"""A stand-in trial workbook for sweep tests about the runner, not training: a kernel start and half a second of work.
With `meet` > 1 each trial first waits (up to a minute) until `meet` trials run at once, or until every other trial
of the sweep has finished, so that trials a runner starts together are seen to overlap."""
import json
from pathlib import Path

_BODY = '''import json, os, time
from pathlib import Path
run = Path(runs_dir)/run_id
run.mkdir(parents=True, exist_ok=True)
t0 = time.time()
if meet > 1:
    lobby = Path(lobby_dir); (lobby/"running").mkdir(parents=True, exist_ok=True); (lobby/"done").mkdir(exist_ok=True)
    (lobby/"running"/run_id).touch()
    while (len(list((lobby/"running").iterdir())) < meet and len(list((lobby/"done").iterdir())) < trials - 1
           and time.time() - t0 < 60): time.sleep(0.05)
time.sleep(seconds)
end = time.time()
if meet > 1: (lobby/"done"/run_id).touch(); (lobby/"running"/run_id).unlink()
# the metric, and what the runner gave this trial: its process, its GPUs, when it ran
(run/"summary.json").write_text(json.dumps({"train_loss": learning_rate * 1000 + lora_r, "pid": os.getpid(),
    "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": t0, "end": end}))
'''

def fake_workbook(folder, seconds:float=0.5, meet:int=1, trials:int=0) -> Path:
    "Write the workbook into `folder`: parameters lora_r and learning_rate; `summary.json` holds `train_loss`."
    params = (f'lora_r = 8\nlearning_rate = 1e-3\nruns_dir = "runs"\nrun_id = "x"\nseconds = {seconds}\n'
              f'meet = {meet}\ntrials = {trials}\nlobby_dir = {str(Path(folder)/"lobby")!r}\n')
    cells = [{"cell_type": "code", "execution_count": None, "id": "params", "metadata": {"tags": ["parameters"]},
              "outputs": [], "source": params},
             {"cell_type": "code", "execution_count": None, "id": "work", "metadata": {}, "outputs": [],
              "source": _BODY}]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}}
    p = Path(folder)/"fake_trial.ipynb"
    p.write_text(json.dumps(nb))
    return p

def sweep_file(folder, workbook, body:dict) -> Path:
    "A sweep file running `workbook`, with `body` (method, parameters, run_cap, ...) and the metric train/loss."
    import yaml
    spec = {"metric": {"name": "train/loss", "goal": "minimize"}, **body,
            "command": ["finetune-kit", "run", str(workbook), "--params-json", "${args_json_file}"]}
    p = Path(folder)/f"{body.get('name', 'sweep')}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p
