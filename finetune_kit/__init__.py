"""A notebook-first workbook for turning a general LLM into a task specialist with parameter-efficient fine-tuning

Modules:

- `finetune_kit.cli`: The `finetune-kit` command: every stage as a subcommand that takes the run config's flat parameters, and any workbook as a papermill job.
- `finetune_kit.jobs`: A workbook run as a papermill job: parameters checked before a kernel starts, the executed copy in the run folder, and the stages' own progress (training steps and loss, generation) on the job's terminal.
- `finetune_kit.sweeps.results`: What a trial leaves behind (its metric and its cost), and the sweep's results: trials ranked by metric and by cost, the cheapest configuration within reach of the best, plots, and the chosen trials' configs.
- `finetune_kit.sweeps.runner`: A sweep's trials as experiment-notebook jobs on this host: an Optuna study shared by workers and hosts, one process per trial, Hyperband pruning, resume after a crash, and budgets.
- `finetune_kit.sweeps.spec`: W&B's sweep format, checked against the run config before anything runs, and mapped onto an Optuna search space: grids, distributions and each trial's flat parameters.
- `finetune_kit.tasks`: One `TaskSpec` per task: the record's fields and checks, what the model reads and answers, the metric that decides, and the baseline to beat. Registered by name, as PEFT registers its methods."""

__version__ = "0.0.1"
