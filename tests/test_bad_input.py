"""Bad input never gives a traceback (issue 15): every command with bad paths, bad values and damaged files exits 2 with
one line naming the file, record or parameter; and every reader, fed arbitrary bytes, nesting and sizes, either reads
records (quarantining the ones it cannot read) or raises the kit's one-line `DataError`.

`CASES` is the table: (command line with `{d}` for the folder of damaged files, what the error line must contain).
"""
import csv, gzip, io, json, os, shlex, subprocess, zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from typer.testing import CliRunner

from helpers import ROOT, FIX, CLS, cli_commands, tiny_adapter, tiny_config
from finetune_kit.cli import app
from finetune_kit.files import KitError

WORKBOOK = ROOT/"nbs/workbooks/finetune.ipynb"
runner = CliRunner()


def _notebook(tagged:bool) -> str:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": ["parameters"]} if tagged else {},
            "outputs": [], "source": "seed = 1"}
    return json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})

def _zipped(name:str, data:bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z: z.writestr(name, data)
    return buf.getvalue()

def _sweep(**over) -> str:
    s = {"method": "grid", "metric": {"name": "train/loss", "goal": "minimize"},
         "parameters": {"lora_r": {"values": [2]}},
         "command": ["finetune-kit", "run", str(WORKBOOK), "--params-json", "${args_json_file}"]}
    return json.dumps({**s, **over})

FILES = {  # name -> bytes of a damaged (or otherwise unusable) file
    "utf16.jsonl": '{"text": "hello", "label": "a"}\n'.encode("utf-16"),
    "utf16.csv": "text,label\nhello,a\n".encode("utf-16"),
    "dup_header.csv": b"text,label,text\nhello there,a,x\n",
    "empty.csv": b"",
    "prepared_split.jsonl": b'{"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "assistant", '
                            b'"content": "a"}], "meta": {"source": "bbc/a.txt", "line": null}}\n',
    "garbage.parquet": b"PAR1 this is not parquet at all",
    "bad.json": b'{"records": [1, 2',
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "scalar.json": b"42",
    "notes.xyz": b"text,label\nhello,a\n",
    "latin1.yaml": "method: grid\nname: caf\xe9\n".encode("latin-1"),
    "invalid.yaml": b"method: [grid\n",
    "deep.yaml": b"[" * 5000,
    "list.yaml": b"- method: grid\n",
    "unknown_key.yaml": _sweep(metirc={"name": "x"}).encode(),
    "lora0.yaml": _sweep(parameters={"lora_r": {"values": [2, 0]}}).encode(),
    "badmetric.yaml": _sweep(metric={"name": "eval/tuned/f1_macro", "goal": "maximize"}).encode(),
    "nonb.yaml": _sweep(command=["finetune-kit", "run", "nosuch/notebook.ipynb", "--params-json",
                                 "${args_json_file}"]).encode(),
    "rouge_for_cls.yaml": _sweep(metric={"name": "eval/tuned/rougeL", "goal": "maximize"},
                                 parameters={"lora_r": {"values": [2]}, "task": {"value": "classification"}}).encode(),
    "nosuch_model.yaml": _sweep(parameters={"lora_r": {"values": [2]},
                                            "base_model": {"values": ["tiny-test", "nosuch-model"]}}).encode(),
    "params_list.json": b"[1, 2]",
    "params_bad.json": b"{seed: 3}",
    "params_latin1.json": '{"run_id": "caf\xe9"}'.encode("latin-1"),
    "params_range.json": b'{"lora_r": 0}',
    "notjson.ipynb": b"# a python script, not a notebook\n",
    "nocells.ipynb": b'{"metadata": {}}',
    "untagged.ipynb": _notebook(False).encode(),
    "sheet_garbage.csv": b"\x00\x01\x02 not a sheet",
    "review_key.json": b"{not json",
    "ls_garbage.json": b"[{\"id\": 1}]",
    "small.jsonl": "".join(json.dumps({"text": f"record {i} about {w}", "label": "ab"[i % 2]}) + "\n"
                           for i, w in enumerate("cats dogs birds fish frogs snakes mice owls".split())).encode(),
    "unusable.jsonl": b'{"text": " ", "label": "a"}\n{"txt": "no text field"}\n',
    "empty.jsonl": b"",
    "header_only.csv": b"text,label\n",
    "archive.jsonl": _zipped("inner.jsonl", b'{"text": "zipped", "label": "a"}\n'),
    "cut.jsonl.gz": gzip.compress(b'{"text": "cut short", "label": "a"}\n' * 20)[:30],
    # preference data (issue 26) in which no record is left: each quarantined with its reason
    "pairs_same.jsonl": b'{"prompt": "a?", "chosen": "x", "rejected": "x"}\n{"prompt": "b?", "chosen": "y", "rejected": " y "}\n',
    "pairs_empty.jsonl": b'{"prompt": "a?", "chosen": "", "rejected": "x"}\n',
    "pairs_long.jsonl": json.dumps({"prompt": "word " * 300, "chosen": "x", "rejected": "y"}).encode() + b"\n",
    "ratings_bad.jsonl": b'{"prompt": "a?", "completion": "x", "label": "meh"}\n{"prompt": "b?", "completion": "y", "label": 7}\n',
}

# `{d}`: the folder holding FILES and the folders made by `damaged`
CASES = [
    ("version extra", "unexpected extra argument"),
    ("nosuch-command", "No such command"),
    # run
    ("run {d}/nosuch.ipynb", "nosuch.ipynb: no such notebook"),
    ("run {d}", "is a folder, not a notebook"),
    ("run {d}/notjson.ipynb", "notjson.ipynb: not a notebook"),
    ("run {d}/nocells.ipynb", "nocells.ipynb: not a notebook (no cells)"),
    ("run {d}/untagged.ipynb -p seed 3", "untagged.ipynb: no cell is tagged 'parameters'"),
    (f"run {WORKBOOK} -p lora_r 0", "parameter lora_r must be >= 1"),
    (f"run {WORKBOOK} -p nosuch 1", "unknown parameter 'nosuch'"),
    (f"run {WORKBOOK} --params-json {{d}}/nosuch.json", "nosuch.json: cannot read parameters"),
    (f"run {WORKBOOK} --params-json {{d}}/params_list.json", "params_list.json: parameters must be a JSON object"),
    (f"run {WORKBOOK} --params-json {{d}}/params_bad.json", "params_bad.json: cannot read parameters"),
    (f"run {WORKBOOK} --params-json {{d}}/params_latin1.json", "params_latin1.json: cannot read parameters"),
    (f"run {WORKBOOK} --params-json {{d}}/params_range.json", "parameter lora_r must be >= 1"),
    (f"run {WORKBOOK} -p seed", "-p needs NAME VALUE"),
    ("run {d}/tagged.ipynb -o {d}/tagged.ipynb", "tagged.ipynb: is the workbook itself"),
    (f"run {WORKBOOK} -o {{d}}/afile", "afile: already exists: the executed notebook would replace it"),
    # train
    ("train -p learning_rate nan", "parameter learning_rate must be a finite number"),
    ("train -p recipe cpu-clasification", "unknown recipe 'cpu-clasification': choose one of"),
    ("train -p recipe cpu-ner", "recipe cpu-ner is for task ner, not classification"),
    ("recipes --bogus", "No such option: --bogus"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o6 -p text_field body -p label_field topic "
     "-p recipe cpu-classification", "recipe cpu-classification sets test_records"),
    ("train -p learning_rate -1e-4", "parameter learning_rate must be > 0"),
    ("train -p learning_rate fast", "parameter 'learning_rate' must be"),
    ("train -p num_train_epochs -1", "parameter num_train_epochs must be > 0"),
    ("train -p per_device_train_batch_size 0", "parameter per_device_train_batch_size must be >= 1"),
    ("train -p max_records -5", "parameter max_records must be >= 1"),
    ("train -p seed -1", "parameter seed must be in [0, 4294967295]"),
    ("train -p peft_method nosuch", "parameter 'peft_method' must be one of"),
    ("train -p lora_dropout 1.5", "parameter lora_dropout"),
    ("train --resume {d}/nosuch", "nosuch"),
    ("train --resume {d}/run -p seed 3", "--resume takes the run's saved config"),
    ("train --resume {d}/run", "checkpoint-4-backup"),
    ("train -p runs_dir {d}/runs -p base_model nosuch-model -p source {d}/nosuch.jsonl", "nosuch"),
    # train: data parameters beside a prepared folder, an adapter too large for memory, a hub model with no hub (issue 24)
    (f"train -p data_dir {CLS} -p max_records 5 -p source bbc -p runs_dir {{d}}/runs",
     f"parameters source, max_records cannot apply to data_dir {CLS}: it is already prepared"),
    (f"train -p data_dir {CLS} -p task ner -p runs_dir {{d}}/runs", f"task ner: data_dir {CLS} holds classification records"),
    (f"train -p runs_dir {{d}}/runs -p base_model tiny-test -p source {FIX}/classification.jsonl -p text_field body "
     "-p label_field topic -p report_to none -p lora_r 1000000000", "lora_r 1000000000: the lora adapter would hold"),
    (f"train -p runs_dir {{d}}/runs -p base_model nosuch-org/nosuch-model -p source {FIX}/classification.jsonl "
     "-p text_field body -p label_field topic", "nosuch-org/nosuch-model: cannot load it from the Hugging Face hub"),
    # data prepare
    ("data prepare {d}/nosuch.jsonl --out {d}/o", "nosuch.jsonl: no such file or folder"),
    ("data prepare {d}/notes.xyz --out {d}/o", "notes.xyz: unknown format '.xyz'"),
    ("data prepare {d}/utf16.jsonl --out {d}/o", "utf16.jsonl: the file looks like UTF-16 text"),
    ("data prepare {d}/utf16.csv --out {d}/o", "utf16.csv: the file looks like UTF-16 text"),
    ("data prepare {d}/dup_header.csv --out {d}/o", "dup_header.csv"),
    ("data prepare {d}/empty.csv --out {d}/o", "empty.csv"),
    ("data prepare {d}/garbage.parquet --out {d}/o", "garbage.parquet"),
    ("data prepare {d}/bad.json --out {d}/o", "bad.json"),
    ("data prepare {d}/deep.json --out {d}/o", "deep.json"),
    ("data prepare {d}/scalar.json --out {d}/o", "scalar.json"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o --tokenizer nosuch-model", "nosuch-model: unknown model"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o --tokenizer nosuch-org/nosuch-model",
     "nosuch-org/nosuch-model: cannot load it from the Hugging Face hub"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o -p val_size 1.5", "parameter val_size must be in [0, 1)"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o -p max_chars -5", "parameter max_chars must be >= 1"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o -p val_records -3", "parameter val_records must be >= 0"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o -p text_field body -p label_field topic -p recipe none "
     "-p val_records 500", "val_records 500 leaves no record to train on"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o -p text_field body -p label_field topic "
     "-p group_field nosuch", "group_field 'nosuch' is in none of the records"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o -p task nosuch", "parameter 'task' must be one of"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/o -p val_size 0.5 -p test_size 0.5", "val_size"),
    (f"data prepare {FIX}/classification.jsonl --out {{d}}/afile", "afile"),
    ("data prepare {d}/prepared/train.jsonl --out {d}/prepared", "would replace this source"),
    ("data prepare {d}/small.jsonl --out {d}/prepared -p test_source {d}/prepared/train.jsonl", "would replace this source"),
    # data prepare: empty, compressed and looping sources, fields no record has, nothing kept, folders not the kit's (issue 24)
    ("data prepare {d}/empty.jsonl --out {d}/o", "empty.jsonl: the file is empty"),
    ("data prepare {d}/header_only.csv --out {d}/o", "header_only.csv: holds no records"),
    ("data prepare {d}/loop.jsonl --out {d}/o", "loop.jsonl: a symlink loop"),
    ("data prepare {d}/archive.jsonl --out {d}/o", "archive.jsonl: is a zip archive, not a data file"),
    ("data prepare {d}/cut.jsonl.gz --out {d}/o", "cut.jsonl.gz: a damaged gzip file"),
    ("data prepare {d}/unusable.jsonl --out {d}/o", "no record was kept of 2 read (rejected: "),
    ("data prepare {d}/small.jsonl --out {d}/o -p text_field contnet", "no record has the field 'contnet' (text_field)"),
    ("data prepare {d}/small.jsonl --out {d}/o -p label_field lable", "did you mean 'label' (-p label_field label)?"),
    ("data prepare {d}/small.jsonl --out {d}/o -p task ner", "no record has the field 'tokens' (task ner's input"),
    ("data prepare {d}/small.jsonl --out {d}/o -p decontaminate {d}/prepared_split.jsonl", "a file the kit prepared"),
    ("data prepare {d}/small.jsonl --out {d}/o -p decontaminate {d}/unusable.jsonl", "none of its 2 records reads as a classification record"),
    ("data prepare {d}/small.jsonl --out {d}/mine", "holds card.md, train.jsonl, which the kit did not write"),
    ("data prepare {d}/small.jsonl --out {d}/proj", "proj: is a project root (it holds settings.ini)"),
    ("data prepare {d}/small.jsonl --out {d}/o --tokenizer nosuch-org/nosuch-model",
     "tokenizer nosuch-org/nosuch-model: cannot load it"),
    # data prepare: sources mixed by ratio, the user's own test set (issue 23)
    ("data prepare {d}/small.jsonl:abc --out {d}/o", "small.jsonl:abc: the ratio after the last ':' must be a positive"),
    ("data prepare :0.5 {d}/small.jsonl:0.5 --out {d}/o", "source :0.5: no file or set before the ratio"),
    ("data prepare {d}/small.jsonl:-0.3 --out {d}/o", "small.jsonl:-0.3: the ratio must be a positive number"),
    ("data prepare {d}/small.jsonl:0 --out {d}/o", "the ratio must be a positive number; got '0'"),
    ("data prepare {d}/small.jsonl:0.7 {d}/unusable.jsonl --out {d}/o", "give every part a ratio, or none"),
    ("data prepare {d}/small.jsonl:0.7 {d}/unusable.jsonl:0.3 --out {d}/o -p recipe none",
     "unusable.jsonl (ratio 0.3) yields no record to mix: none of 2 read is left"),
    ("data prepare {d}/small.jsonl --out {d}/o -p test_source {d}/unusable.jsonl",
     "unusable.jsonl yields no test record (2 read; "),
    ("data prepare {d}/small.jsonl --out {d}/o -p test_source {d}/nosuch.jsonl", "nosuch.jsonl: no such file or folder"),
    ("data prepare {d}/small.jsonl --out {d}/o -p test_source {d}/small.jsonl",
     "every training record (8) is a copy of a record of test_source"),
    ("data prepare {d}/small.jsonl --out {d}/o -p test_source {d}/small.jsonl -p test_records 5",
     "parameters test_records and test_source exclude each other"),
    ("train -p test_source {d}/small.jsonl -p test_records 5", "parameters test_records and test_source exclude each other"),
    ("train -p source {d}/small.jsonl:abc -p runs_dir {d}/runs", "small.jsonl:abc: the ratio after the last ':'"),
    # preference tuning (issue 26): an objective that cannot run is one line before any folder or model
    ("train -p objective ppo", "parameter 'objective' must be one of"),
    ("train -p objective grpo -p peft_method adalora", "objective grpo cannot train peft_method adalora"),
    ("train -p objective orpo -p peft_method prompt_tuning", "objective orpo cannot train peft_method prompt_tuning"),
    ("train -p objective dpo -p source bbc", "objective dpo trains on preference (prompt, chosen, rejected)"),
    ("train -p objective sft -p task preference", "objective sft trains on a task with gold answers"),
    ("train -p objective grpo -p reward_funcs nosuch_rewards:f", "cannot import nosuch_rewards"),
    ("train -p objective grpo -p reward_funcs justaname", "expected module:function"),
    ("train -p objective grpo -p num_generations 3", "num_generations (3)"),
    ("train -p objective dpo -p task preference -p init_adapter {d}/nosuch", "init_adapter: "),
    ("train -p objective dpo -p task preference -p init_adapter {d}/empty_dir", "neither a run folder"),
    ("train -p beta -1", "parameter beta must be >= 0"),
    # each objective: data it does not train on, a method it cannot serve, a start adapter that does not fit
    ("train -p objective dpo -p task unpaired_preference", "the data's task unpaired_preference holds ratings: train it "
                                                           "with objective kto"),
    ("train -p objective dpo -p task preference -p peft_method adalora", "objective dpo cannot train peft_method adalora"),
    ("train -p objective dpo -p task preference -p init_adapter {d}/lora_adapter -p base_model smollm2-135m-instruct",
     "was trained on tiny-test, not on base_model smollm2-135m-instruct"),
    ("train -p objective kto -p source bbc", "objective kto trains on unpaired_preference (prompt, completion, label) or "
                                             "preference"),
    ("train -p objective kto -p task unpaired_preference -p peft_method adalora",
     "objective kto cannot train peft_method adalora"),
    ("train -p objective kto -p task unpaired_preference -p init_adapter {d}/lora_adapter -p base_model tiny-test "
     "-p peft_method dora",
     "is a lora adapter: pass -p peft_method lora"),
    ("train -p objective orpo -p source bbc", "objective orpo trains on preference (prompt, chosen, rejected)"),
    ("train -p objective orpo -p task unpaired_preference", "holds ratings: train it with objective kto"),
    ("train -p objective orpo -p task preference -p init_adapter {d}/run", "init_adapter: "),
    ("train -p objective grpo -p task preference", "objective grpo trains on a task with gold answers"),
    ("train -p objective grpo -p num_generations 1", "parameter num_generations must be >= 2"),
    ("train -p objective grpo -p max_completion_length 0", "parameter max_completion_length must be >= 1"),
    ("train -p objective grpo -p temperature 0", "parameter temperature must be > 0"),
    ("train -p objective grpo -p init_adapter {d}/lora_adapter -p base_model smollm2-135m-instruct",
     "was trained on tiny-test"),
    # preference data with nothing left: every record quarantined, the reasons counted
    ("data prepare {d}/pairs_same.jsonl --out {d}/o -p task preference", "rejected: same_answers 2"),
    ("data prepare {d}/pairs_empty.jsonl --out {d}/o -p task preference", "rejected: empty_field 1"),
    ("data prepare {d}/ratings_bad.jsonl --out {d}/o -p task unpaired_preference", "rejected: bad_rating 2"),
    ("data prepare {d}/pairs_long.jsonl --out {d}/o -p task preference -p max_length 64 --tokenizer tiny-test",
     "rejected: over_token_budget 1"),
    ("data prepare {d}/pairs_same.jsonl --out {d}/o -p task unpaired_preference", "no record has the field 'label'"),
    ("evaluate run {d}/run --data {d}/nosuch", "--data is for a preference run"),
    ("data feedback {d}/nosuch.jsonl --out {d}/o", "nosuch.jsonl: no such feedback file"),
    ("data feedback {d}/garbage_split.jsonl --out {d}/o", "garbage_split.jsonl"),
    ("data feedback {d}/garbage_split.jsonl --out {d}", "a folder of their own"),
    ("data review-pairs {d}/nosuch.csv --out {d}/p.jsonl", "nosuch.csv: no such file"),
    ("data review-pairs {d}/review/review_sheet.csv --out {d}/p.jsonl", "no item was preferred either way"),
    ("data review-pairs {d}/review/review_sheet.csv --out {d}/review/review_sheet.csv", "is the file being read"),
    ("data review-pairs {d}/review/review_sheet.csv --out {d}/afile", "afile: already exists (--force replaces it)"),
    ("data review-pairs {d}/review/review_sheet.csv --key {d}/review/other_key.json --out {d}/p.jsonl",
     "another evaluation"),
    ("data review-pairs {d}/review/dup_conflict.csv --out {d}/p.jsonl", "is judged twice and the verdicts disagree"),
    ("data mistakes {d}/nosuch --out {d}/m.jsonl", "nosuch: no such run folder"),
    ("data mistakes {d}/empty_dir --out {d}/m.jsonl", "neither a run folder"),
    ("data mistakes {d}/run --out {d}/m.jsonl --below 1.5", "--below"),
    ("data mistakes {d}/run --out {d}/m.jsonl -p lora_r 4", "parameter 'lora_r' is not read by `data mistakes`"),
    # evaluate run
    ("evaluate run {d}/nosuch", "nosuch: no such run folder, data folder or file"),
    (f"evaluate run {CLS} --adapter {{d}}/nosuch", "nosuch: no such adapter folder"),
    (f"evaluate run {CLS} -p max_eval_samples 0", "parameter max_eval_samples must be >= 1"),
    (f"evaluate run {CLS} -p max_eval_samples -1", "parameter max_eval_samples must be >= 1"),
    (f"evaluate run {CLS} -p eval_batch_size 0", "parameter eval_batch_size must be >= 1"),
    (f"evaluate run {CLS} -p eval_split dev", "parameter 'eval_split' must be one of"),
    (f"evaluate run {CLS} -p lora_r 4", "parameter 'lora_r' is not read by `evaluate run`"),
    ("evaluate run {d}/empty_dir -p base_model tiny-test", "empty_dir"),
    ("evaluate run {d}/damaged_data -p base_model tiny-test", "damaged_data"),
    ("evaluate run {d}/garbage_split.jsonl -p base_model tiny-test", "garbage_split.jsonl"),
    (f"evaluate run {CLS} -p base_model nosuch-org/nosuch-model -p runs_dir {{d}}/runs",
     "nosuch-org/nosuch-model: cannot load it from the Hugging Face hub"),
    (f"evaluate run {CLS} --out {{d}}/review_filled -p base_model tiny-test", "review_filled/review_sheet.csv holds a "
     "filled review sheet (6 cells filled in): an evaluation there would replace it"),
    (f"evaluate run {CLS} --out {{d}}/garbage_eval", "garbage_eval: holds an evaluation; pass --overwrite"),
    (f"evaluate run {CLS} --out {{d}}/synth_plain --overwrite", "synth_plain: the folder holds files the kit did not write"),
    (f"evaluate run {CLS} --out {{d}}/afile", "afile: a file, not a folder"),
    # review make / import
    ("review make {d}/nosuch", "nosuch"),
    ("review make {d}/empty_dir", "empty_dir"),
    ("review make {d}/garbage_eval", "garbage_eval"),
    ("review make {d}/base_only_eval", "no tuned answers to review"),
    ("review make {d}/base_only_eval -p review_samples -1", "parameter review_samples"),
    ("review make {d}/review_filled", "holds a filled review sheet (6 cells filled in): a new sheet would replace it"),
    ("review import {d}/nosuch.csv", "nosuch.csv: no such file"),
    ("review import {d}/sheet_garbage.csv", "review_key.json: cannot read the review key"),
    ("review import {d}/dup_header.csv --key {d}/nosuch_key.json", "nosuch_key.json: no review key"),
    ("review import {d}/review/review_sheet.csv --key {d}/review/other_key.json", "another evaluation"),
    ("review import {d}/review/garbage.csv", "garbage.csv"),
    ("review import {d}/ls_garbage.json --key {d}/review/review_key.json", "Label Studio task 1 has no data.item"),
    ("review import {d}/review/dup_conflict.csv", "is judged twice and the verdicts disagree"),
    # models
    ("models list extra", "unexpected extra argument"),
    ("models info nosuch-model", "nosuch-model"),
    ("models info nosuch-org/nosuch-model", "nosuch-org/nosuch-model: cannot load it from the Hugging Face hub"),
    ("models info {d}/empty_dir", "empty_dir"),
    ("models pull nosuch-model", "nosuch-model"),
    # export, serve, monitor
    ("export {d}/nosuch --out {d}/x", "nosuch: no such run or adapter folder"),
    ("export {d}/empty_dir --out {d}/x", "empty_dir: neither a run folder"),
    ("export {d}/empty_dir --out {d}/afile", "afile already exists"),
    ("export {d}/empty_dir --out {d}/x --format onnx", "--format 'onnx': choose safetensors or gguf"),
    ("export {d}/empty_dir --out {d}/x --format gguf --n-probes 0", "--n-probes 0: must be at least 1"),
    ("export {d}/empty_dir --out {d}/x --format gguf --dtype float16", "--dtype is for --format safetensors"),
    ("export {d}/empty_dir --out {d}/x --quant q8_0", "--quant is for --format gguf"),
    ("export {d}/empty_dir --out {d}/x --format gguf --quant q2_k", "--quant 'q2_k': choose f32, f16, bf16, q8_0, q4_0, q4_k_s, q4_k_m"),
    ("export {d}/empty_dir --out {d}/x --format gguf --quant int3", "--quant 'int3': choose f32, f16, bf16, q8_0"),
    ("export {d}/empty_dir --out {d}/x --format gguf", "empty_dir: neither a run folder"),
    ("serve a={d}/nosuch", "adapter 'a': "),
    ("serve justname", "adapter 'justname': "),
    ("serve a={d}/empty_dir", "empty_dir: neither a run folder"),
    ("serve --scheduler fifo -p base_model tiny-test", "--scheduler 'fifo': choose continuous or batch"),
    ("serve --port 70000 -p base_model tiny-test", "--port 70000: a port is a number from 1 to 65535"),
    ("serve --max-batch 0 -p base_model tiny-test", "--max-batch 0: must be at least 1"),
    ("serve --max-tokens -5 -p base_model tiny-test", "--max-tokens -5: must be at least 1"),
    ("serve --max-queue 0 -p base_model tiny-test", "--max-queue 0: must be at least 1"),
    ("synth generate {d}/nosuch.jsonl -o {d}/s -d x", "nosuch.jsonl: no such file"),
    ("synth generate {d}/utf16.jsonl -o {d}/s -d x", "utf16.jsonl: the file looks like UTF-16"),
    ("synth generate {d}/empty.jsonl -o {d}/s -d x", "empty.jsonl: the file is empty"),
    ("synth generate {d}/small.jsonl -o {d}/s -d x --shots 0", "Invalid value for '--shots'"),
    ("synth generate {d}/small.jsonl -o {d}/s -d x --temperature -1", "Invalid value for '--temperature'"),
    ("synth generate {d}/small.jsonl -o {d}/s -d x --top-p 0", "Invalid value for '--top-p'"),
    ("synth generate {d}/small.jsonl -o {d}/s -d x --n 0", "Invalid value for '--n'"),
    ("synth generate {d}/small.jsonl -o {d}/s_down -d x --n 2 --endpoint http://127.0.0.1:9 --max-retries 0 "
     "--no-progress", "http://127.0.0.1:9/v1/chat/completions: no answer to any of the 2 prompts (ConnectError"),
    ("synth sheet {d}/nosuch", "nosuch: no review.jsonl"),
    ("synth import {d}/nosuch {d}/x.csv", "nosuch: no review.jsonl"),
    ("synth accepted {d}/nosuch -o {d}/a.jsonl", "nosuch: no review.jsonl"),
    ("synth sheet {d}/synth_filled", "review.csv holds 2 cells of review work not yet imported"),
    ("synth sheet {d}/synth_plain", "review.jsonl:1: not a review queue row"),
    ("synth import {d}/synth_run {d}/synth_dup.csv", "item 'c0' is judged twice and the verdicts disagree"),
    ("synth import {d}/synth_run {d}/synth_word.csv", "synth_word.csv row 2: status 'maybe' is not one of"),
    ("synth accepted {d}/synth_run -o {d}/synth_run/review.jsonl --force", "is the review queue"),
    ("synth accepted {d}/synth_run -o {d}/afile --force", "afile already exists and holds other data"),
    ("synth accepted {d}/synth_run -o {d}/synth_run/accepted.jsonl", "--force replaces it"),
    ("monitor {d}/nosuch.jsonl", "nosuch.jsonl: no such request log"),
    ("monitor {d}/garbage_split.jsonl", "garbage_split.jsonl: the request log has no rows (2 lines skipped: cut"),
    ("monitor {d}/utf16.jsonl", "utf16.jsonl: the request log has no rows ("),
    ("monitor {d}/garbage_split.jsonl --drift {d}/nosuch", "--drift"),
    ("canary dance v1", "canary action must be status, pin, unpin, promote or rollback"),
    ("canary pin", "canary pin: name the canary"),
    ("canary status --url http://127.0.0.1:9", "cannot reach the server at http://127.0.0.1:9"),
    ("serve a={d}/empty_dir --canary b=c", "'b' is not a served adapter"),
    ("serve a={d}/empty_dir --canary a=a --canary-min-labelled 1", "canary min_labelled must be an integer of at least 2"),
    ("monitor {d}/one_request.jsonl --resamples 0", "--resamples: must be at least 1"),
    ("monitor {d}/one_request.jsonl --resamples -1", "--resamples: must be at least 1"),
    # sweep
    ("sweep {d}/nosuch.yaml", "nosuch.yaml: cannot read sweep file"),
    ("sweep {d}", "cannot read sweep file"),
    ("sweep {d}/latin1.yaml", "latin1.yaml: not UTF-8 (byte 0xe9 on line 2)"),
    ("sweep {d}/invalid.yaml", "invalid.yaml: not valid YAML"),
    ("sweep {d}/deep.yaml", "deep.yaml: not valid YAML"),
    ("sweep {d}/list.yaml", "list.yaml: a sweep file is a mapping"),
    ("sweep {d}/unknown_key.yaml", "metirc: unknown key"),
    ("sweep {d}/lora0.yaml", "lora_r"),
    ("sweep {d}/badmetric.yaml --dir {d}/sweepdir", "no trial logs 'eval/tuned/f1_macro'"),
    ("sweep {d}/nonb.yaml --dir {d}/sweepdir", "nosuch/notebook.ipynb not found"),
    ("sweep {d}/lora0.yaml --parallel 0", "lora_r"),
    (f"sweep {ROOT}/sweeps/tiny.yaml --parallel 0 --dir {{d}}/sweepdir", "parallel: must be at least 1"),
    # sweep: budgets out of range, a metric the task never logs, an unknown built-in model (issue 24)
    (f"sweep {ROOT}/sweeps/tiny.yaml --max-trials 0 --dir {{d}}/sweepdir", "--max-trials: must be at least 1"),
    (f"sweep {ROOT}/sweeps/tiny.yaml --max-hours -1 --dir {{d}}/sweepdir", "--max-hours: must be a number above 0"),
    (f"sweep {ROOT}/sweeps/tiny.yaml --max-gpu-hours nan --dir {{d}}/sweepdir", "--max-gpu-hours: must be a number above"),
    (f"sweep {ROOT}/sweeps/tiny.yaml --within -1 --dir {{d}}/sweepdir", "--within: must be a number >= 0"),
    (f"sweep {ROOT}/sweeps/tiny.yaml --within nan --dir {{d}}/sweepdir", "--within: must be a number >= 0"),
    ("sweep {d}/rouge_for_cls.yaml --dir {d}/sweepdir", "no trial of task classification logs 'eval/tuned/rougeL'"),
    ("sweep {d}/nosuch_model.yaml --dir {d}/sweepdir", "parameters.base_model.values[1]: nosuch-model: unknown model"),
    # output folders that are a project's root (issue 24: `--out /` was accepted)
    ("synth generate {d}/small.jsonl -o {d}/proj -d x --endpoint http://127.0.0.1:9", "proj: is a project root"),
    ("monitor {d}/one_request.jsonl --out {d}/proj", "proj: is a project root"),
    (f"sweep {ROOT}/sweeps/tiny.yaml --dir {{d}}/proj", "proj: is a project root"),
    ("tune bbc --budget 45m --dir {d}/proj", "proj: is a project root"),
    # tune (a budget too small for one trial: tests/test_tune.py, since it needs the project's workbook)
    ("tune bbc", "tune needs a budget: --budget 45m"),
    ("tune bbc --budget soon", "budget 'soon': write it with its unit"),
    ("tune bbc --budget 45", "budget '45': write it with its unit"),
    ("tune bbc --budget 0m", "budget '0m': must be more than zero"),
    ("tune {d}/nosuch.jsonl --budget 45m", "nosuch.jsonl: no such file or folder"),
    ("tune bbc --budget 45m -p eval_split test", "parameter 'eval_split' is not read by `tune`"),
    ("tune bbc --budget 45m -p epsilon -1", "parameter epsilon must be >= 0"),
    ("tune bbc --budget 45m -p val_size 0", "no validation split (val_size 0 or val_records 0)"),
    ("tune bbc --budget 45m -p val_records 0", "no validation split (val_size 0 or val_records 0)"),
    ("tune bbc --budget 45m -p tune_val_records 0", "parameter tune_val_records must be >= 1"),
    ("tune bbc --budget 45m -p task chat -p peft_method lora -p learning_rate 1e-3 -p lora_r 8 -p num_train_epochs 1",
     "nothing to search"),
    ("tune bbc --budget 45m --parallel 0", "--parallel: must be at least 1"),
]


def damaged(d:Path):
    "Write FILES and the damaged folders into `d`."
    for name, b in FILES.items(): (d/name).write_bytes(b)
    (d/"empty_dir").mkdir()
    (d/"loop.jsonl").symlink_to("loop.jsonl")
    (d/"tagged.ipynb").write_text(_notebook(True))
    (d/"mine").mkdir(); (d/"mine"/"train.jsonl").write_text('{"my": "own"}\n'); (d/"mine"/"card.md").write_text("# mine\n")
    (d/"proj").mkdir(); (d/"proj"/"settings.ini").write_text("[finetune_kit]\n")
    (d/"afile").write_text("a file where the output folder should go\n")
    (d/"prepared").mkdir(); (d/"prepared"/"train.jsonl").write_bytes((FIX/"classification.jsonl").read_bytes())
    (d/"damaged_data").mkdir()
    (d/"damaged_data"/"data.json").write_text('{"task": "classification", "labels": ')
    (d/"damaged_data"/"test.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (d/"garbage_split.jsonl").write_bytes(b"{not json\n\x00\x01\n")
    (d/"garbage_eval").mkdir(); (d/"garbage_eval"/"predictions.jsonl").write_bytes(b'{"id": 1, \n[[[\n')
    (d/"base_only_eval").mkdir()
    row = {"id": "a", "prompt": "p", "base_output": "x"}
    (d/"base_only_eval"/"predictions.jsonl").write_text(json.dumps(row) + "\n")
    run = d/"run"; (run/"checkpoints"/"checkpoint-4-backup").mkdir(parents=True)
    from finetune_kit.config import save_config
    from finetune_kit.settings import make_config
    save_config(tiny_config(runs_dir=str(d), run_id="run"), run/"config.json")
    tiny_adapter(d/"lora_adapter", seed=1)  # a LoRA adapter on tiny-test: a start for the preference objectives
    from finetune_kit.evaluate import make_review_sheet, write_review
    recs = [json.loads(l) for l in (CLS/"test.jsonl").read_text().splitlines()][:6]
    sheet, key = make_review_sheet(recs, ["sport"] * 6, [r["reference"] for r in recs], 6, 0)
    write_review(sheet, key, d/"review")
    other = {k: {**v, "answers": "0" * 12} for k, v in key.items()}
    (d/"review"/"other_key.json").write_text(json.dumps(other))
    (d/"review"/"garbage.csv").write_bytes(b'item,verdict\n"unclosed,1\n')
    filled = d/"review_filled"; filled.mkdir()  # an eval folder whose sheet someone has filled in
    (filled/"predictions.jsonl").write_text("".join(json.dumps({"id": r["id"], "prompt": "p", "base_output": "sport",
                                                                "tuned_output": r["reference"]}) + "\n" for r in recs))
    sheet.assign(verdict="1").to_csv(filled/"review_sheet.csv", index=False)
    import pandas as pd
    pd.concat([sheet.assign(verdict="1"), sheet.head(1).assign(verdict="2")]).to_csv(d/"review"/"dup_conflict.csv",
                                                                                     index=False)
    from finetune_kit.data.queue import add_to_queue, review_item, write_accepted, write_queue_csv
    for name in ("synth_run", "synth_filled"):  # synth runs: one with accepted records written, one with a filled sheet
        (d/name).mkdir()
        add_to_queue(d/name/"review.jsonl", [{"id": f"c{i}", "task": "classification",
                                              "record": {"text": f"candidate number {i}", "label": "sport"}}
                                             for i in range(3)])
    review_item(d/"synth_run"/"review.jsonl", "c0", "accepted")
    write_accepted(d/"synth_run"/"review.jsonl", d/"synth_run"/"accepted.jsonl")
    sheet = write_queue_csv(d/"synth_filled"/"review.jsonl")
    sheet.write_text(sheet.read_text(encoding="utf-8-sig").replace("c0,pending,", "c0,accept,").replace(
        "c1,pending,", "c1,pending,check this"), encoding="utf-8-sig")
    (d/"synth_plain").mkdir()
    (d/"synth_plain"/"review.jsonl").write_text('{"text": "a record", "label": "sport"}\n')
    (d/"synth_dup.csv").write_text("id,status,note,text,label\nc0,accept,,candidate number 0,sport\n"
                                   "c0,reject,,candidate number 0,sport\n")
    (d/"one_request.jsonl").write_text(json.dumps({"time": 1.0, "status": 200, "latency_s": 0.1, "model": "a",
                                                    "adapter": "a", "arm": "-", "completion_tokens": 3}) + "\n")
    (d/"synth_word.csv").write_text("id,status,note,text,label\nc1,maybe,,candidate number 1,sport\n")


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    damaged(d)
    return d


@pytest.mark.parametrize("cmd,says", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_exit_2(bad_dir, cmd, says, monkeypatch):
    monkeypatch.chdir(bad_dir)  # nothing the command writes by default lands in the repository
    r = runner.invoke(app, shlex.split(cmd.format(d=bad_dir)))
    out = r.output.strip()
    assert r.exit_code == 2 and "Traceback" not in r.output, (r.exit_code, r.output[-2000:], repr(r.exception))
    errs = [l for l in out.splitlines() if l.startswith("error: ")]
    assert len(errs) == 1 and out.splitlines()[-1] == errs[0], out
    assert says in errs[0], errs[0]


def test_every_command_is_in_the_table():
    tried = {c.split(" --")[0].split(" -p")[0] for c, _ in CASES}
    untried = [p for p in cli_commands(app) if not any(t == p or t.startswith(p + " ") for t in tried)]
    assert untried == [], untried


def test_the_console_script_prints_one_line_on_stderr(bad_dir, run_cli):
    "The same through the installed `finetune-kit` script: stderr holds one line, stdout nothing."
    for cmd in ("sweep {d}/latin1.yaml", "data prepare {d}/utf16.jsonl --out {d}/o", "run {d}/notjson.ipynb"):
        r = run_cli(*shlex.split(cmd.format(d=bad_dir)))
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, (cmd, r.stderr)
        assert r.stderr.startswith("error: ")


# --- every reader, arbitrary input ------------------------------------------------------------------------

def _nested(depth:int) -> str: return '{"text": ' + "[" * depth + '"x"' + "]" * depth + ', "label": "a"}'

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=20)
LINE = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["text", "label", "tokens", "tags", "messages", "input", "output"]), JSON_VALUES,
                    max_size=4).map(lambda v: json.dumps(v).encode()),
    st.integers(0, 3000).map(lambda n: _nested(n).encode()),  # nesting past any parser's depth
    st.integers(0, 200_000).map(lambda n: b'{"text": "' + b"x" * n + b'", "label": "a"}'),  # sizes
    st.sampled_from([b'"unclosed, quote', b"a\tb\tc\td", b"\xff\xfe", b"\xef\xbb\xbf", b"NaN", b'{"text": NaN}',
                     b"-DOCSTART- -X- O", b"word NN B-PER", b"word", b"\x00\x00", b",,,", b"\r"]),
)

def _read_all(path:Path, task:str="classification") -> tuple[int, int]:
    "Read `path` as `data prepare` does: (records read, records quarantined); only a one-line `DataError` may escape."
    from finetune_kit.data.sources import DataError, read_source, screen_record, validate_record
    n = bad = 0
    try:
        for raw in read_source(path):
            n += 1
            if raw.get("reason"): bad += 1; continue
            data, too_large = screen_record(raw["data"])
            if too_large: bad += 1; continue
            try: validate_record(data, task)
            except KitError: bad += 1
            except Exception as e:  # the stage quarantines these; the reader must not raise them
                if type(e).__name__ != "Rejected": raise
                bad += 1
    except DataError as e:
        assert "\n" not in str(e) and str(path.name) in str(e), str(e)
    return n, bad

@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(LINE, max_size=12), suffix=st.sampled_from([".jsonl", ".csv", ".tsv", ".conll", ".json"]),
       task=st.sampled_from(["classification", "ner", "summarization", "instruction", "chat"]))
@example(lines=[_nested(5000).encode()], suffix=".jsonl", task="classification")
@example(lines=[b"[" * 100_000], suffix=".json", task="classification")
@example(lines=[b'text\tlabel', b'"Hello world, said nobody\ta', b"x\ty"], suffix=".tsv", task="classification")
@example(lines=[b"EU NNP B-NP B-ORG", b"in IN B-PP", b"", b"x NN O"], suffix=".conll", task="ner")
def test_readers_never_raise_on_arbitrary_input(tmp_path_factory, lines, suffix, task):
    p = tmp_path_factory.mktemp("fuzz")/f"f{suffix}"
    p.write_bytes(b"\n".join(lines) + b"\n")
    _read_all(p, task)

@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".tsv", ".conll", ".json", ".parquet"]))
@example(data=b"PAR1\x00\x00PAR1", suffix=".parquet")
@example(data='{"text": "hé"}\n'.encode("utf-16"), suffix=".jsonl")
def test_readers_never_raise_on_arbitrary_bytes(tmp_path_factory, data, suffix):
    p = tmp_path_factory.mktemp("bytes")/f"f{suffix}"
    p.write_bytes(data)
    _read_all(p)

@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(files=st.lists(st.tuples(st.sampled_from(["sport", "tech", "x y"]), st.binary(max_size=80)), max_size=6))
def test_the_label_folder_reader_never_raises(tmp_path_factory, files):
    d = tmp_path_factory.mktemp("folder")
    for i, (label, b) in enumerate(files):
        (d/label).mkdir(exist_ok=True); (d/label/f"{i}.txt").write_bytes(b)
    _read_all(d)

@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(LINE, min_size=1, max_size=8), suffix=st.sampled_from([".jsonl", ".csv", ".conll"]))
def test_prepare_on_arbitrary_input_writes_its_folder_or_fails_in_one_line(tmp_path_factory, lines, suffix):
    "The whole stage: a folder whose counts reconcile, or a one-line `KitError` and no folder."
    from finetune_kit.settings import make_config
    from finetune_kit.data import prepare_data
    d = tmp_path_factory.mktemp("prep")
    (d/f"s{suffix}").write_bytes(b"\n".join(lines) + b"\n")
    task = "ner" if suffix == ".conll" else "classification"
    try: info = prepare_data(make_config({"task": task, "max_records": None}, settings=False), d/"o",
                             sources=[d/f"s{suffix}"])
    except KitError as e:
        assert "\n" not in str(e) and not (d/"o"/"data.json").exists()
        return
    c = info["counts"]
    assert c["reconciled"] and c["read"] == c["kept"] + c["rejected"] + c["duplicates"] + c["skipped"], c
    assert sum(c["rejected_by_reason"].values()) == c["rejected"]
