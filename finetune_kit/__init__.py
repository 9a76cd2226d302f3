"""A notebook-first workbook for turning a general LLM into a task specialist with parameter-efficient fine-tuning

Modules:

- `finetune_kit.config`: One run config of nested dataclasses flows through every stage: `settings.ini` defaults, flat parameters, run folders, seeding and environment capture.
- `finetune_kit.evaluate.compare`: Base vs tuned: paired bootstrap intervals and a ship verdict, the comparison table and plots, slices, and a cheap classical baseline.
- `finetune_kit.evaluate.generate`: Greedy answers to the data stage's prompts, batched, with a shared-prefix KV cache and two CPU measures; base and tuned answers from one model; perplexity.
- `finetune_kit.evaluate.metrics`: Task metrics on raw answers (labels, entities, ROUGE, SQuAD EM/F1, JSON fields), the per-task scorers the task registry names, and `score_outputs`, which keeps per-record counts for resampling.
- `finetune_kit.evaluate.review`: Blind pairwise human review: a sheet as CSV, a standalone HTML page and Label Studio tasks; the filled sheet back as the tuned model's win/tie/loss rates.
- `finetune_kit.evaluate.run`: `evaluate` as named steps: load the split, generate base and tuned answers, score them and a baseline, compare, write the eval folder, and mirror it to the run's tracking.
- `finetune_kit.models`: Base models from a hub id, a local folder or the packaged SmolLM2 GGUF, the right device and dtype, and every PEFT method built from the run config.
- `finetune_kit.tasks`: One `TaskSpec` per task: the record's fields and checks, what the model reads and answers, the metric that decides, and the baseline to beat. Registered by name, as PEFT registers its methods.
- `finetune_kit.tracking`: Every run keeps its own records in its folder (`metrics.jsonl`, the training curve); W&B or MLflow mirror them: one call opens the backend's run with the flat config, one closes it.
- `finetune_kit.train`: Supervised fine-tuning with TRL's `SFTTrainer`: completion-only loss computed only where it counts, one run folder, tracking, checkpoints and resume."""

__version__ = "0.0.1"
