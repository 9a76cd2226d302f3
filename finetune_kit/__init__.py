"""A notebook-first workbook for turning a general LLM into a task specialist with parameter-efficient fine-tuning

Modules:

- `finetune_kit.cli`: The `finetune-kit` command: every stage as a subcommand that takes the run config's flat parameters, and any workbook as a papermill job.
- `finetune_kit.config`: One run config of nested dataclasses flows through every stage: `settings.ini` defaults, flat parameters, run folders, seeding and environment capture.
- `finetune_kit.data.card`: `card.md` and its plots: where the data came from, what was dropped and why, the label mix per split, token lengths, cleaning and PII, label conflicts and one rendered example.
- `finetune_kit.data.curate`: Clean text, scrub personal data and find exact and near duplicates; clean and scrub whole records by the roles their task gives their text fields.
- `finetune_kit.data.prepare`: `prepare_data` as named steps (read and validate; clean and scrub; dedup and decontaminate; sample; template and token budget; split and write), reading a prepared folder back, and `dvc add`.
- `finetune_kit.data.sources`: Read records from JSON Lines, JSON, CSV/TSV, Parquet, `datasets` objects, label folders and CoNLL files, load the packaged public sets, and check records against their task.
- `finetune_kit.data.split`: Leakage-free train/validation/test splits (stratified, grouped, seeded), stable record ids and one fingerprint for everything training sees.
- `finetune_kit.data.templates`: Every record becomes a chat: the system prompt, the task's instruction and the record's text as the prompt, the gold answer as the completion; and the token lengths of both under the model's chat template.
- `finetune_kit.evaluate.compare`: Base vs tuned: paired bootstrap intervals and a ship verdict, the comparison table and plots, slices, and a cheap classical baseline.
- `finetune_kit.evaluate.generate`: Greedy answers to the data stage's prompts, batched, with a shared-prefix KV cache and two CPU measures; base and tuned answers from one model; perplexity.
- `finetune_kit.evaluate.metrics`: Task metrics on raw answers (labels, entities, ROUGE, SQuAD EM/F1, JSON fields), the per-task scorers the task registry names, and `score_outputs`, which keeps per-record counts for resampling.
- `finetune_kit.evaluate.review`: Blind pairwise human review: a sheet as CSV, a standalone HTML page and Label Studio tasks; the filled sheet back as the tuned model's win/tie/loss rates.
- `finetune_kit.evaluate.run`: `evaluate` as named steps: load the split, generate base and tuned answers, score them and a baseline, compare, write the eval folder, and mirror it to the run's tracking.
- `finetune_kit.jobs`: A workbook run as a papermill job: parameters checked before a kernel starts, the executed copy in the run folder, and the stages' own progress (training steps and loss, generation) on the job's terminal.
- `finetune_kit.models`: Base models from a hub id, a local folder or the packaged SmolLM2 GGUF, the right device and dtype, and every PEFT method built from the run config.
- `finetune_kit.sweeps.results`: What a trial leaves behind (its metric and its cost), and the sweep's results: trials ranked by metric and by cost, the cheapest configuration within reach of the best, plots, and the chosen trials' configs.
- `finetune_kit.sweeps.runner`: A sweep's trials as experiment-notebook jobs on this host: an Optuna study shared by workers and hosts, one process per trial, Hyperband pruning, resume after a crash, and budgets.
- `finetune_kit.sweeps.spec`: W&B's sweep format, checked against the run config before anything runs, and mapped onto an Optuna search space: grids, distributions and each trial's flat parameters.
- `finetune_kit.tasks`: One `TaskSpec` per task: the record's fields and checks, what the model reads and answers, the metric that decides, and the baseline to beat. Registered by name, as PEFT registers its methods.
- `finetune_kit.tracking`: Every run keeps its own records in its folder (`metrics.jsonl`, the training curve); W&B or MLflow mirror them: one call opens the backend's run with the flat config, one closes it.
- `finetune_kit.train`: Supervised fine-tuning with TRL's `SFTTrainer`: completion-only loss computed only where it counts, one run folder, tracking, checkpoints and resume."""

__version__ = "0.0.1"
