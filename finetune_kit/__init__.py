"""A notebook-first workbook for turning a general LLM into a task specialist with parameter-efficient fine-tuning

Modules:

- `finetune_kit.data.card`: `card.md` and its plots: where the data came from, what was dropped and why, the label mix per split, token lengths, cleaning and PII, label conflicts and one rendered example.
- `finetune_kit.data.curate`: Clean text, scrub personal data and find exact and near duplicates; clean and scrub whole records by the roles their task gives their text fields.
- `finetune_kit.data.prepare`: `prepare_data` as named steps (read and validate; clean and scrub; dedup and decontaminate; sample; template and token budget; split and write), reading a prepared folder back, and `dvc add`.
- `finetune_kit.data.sources`: Read records from JSON Lines, JSON, CSV/TSV, Parquet, `datasets` objects, label folders and CoNLL files, load the packaged public sets, and check records against their task.
- `finetune_kit.data.split`: Leakage-free train/validation/test splits (stratified, grouped, seeded), stable record ids and one fingerprint for everything training sees.
- `finetune_kit.data.templates`: Every record becomes a chat: the system prompt, the task's instruction and the record's text as the prompt, the gold answer as the completion; and the token lengths of both under the model's chat template.
- `finetune_kit.tasks`: One `TaskSpec` per task: the record's fields and checks, what the model reads and answers, the metric that decides, and the baseline to beat. Registered by name, as PEFT registers its methods."""

__version__ = "0.0.1"
