"""Tutorials rerun from a clone: their saved outputs name no folder of the machine that ran them."""
import json, re
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1]/"nbs"/"tutorials").glob("*.ipynb"))
# temporary folders, home and cache folders, checkouts and virtual environments of the machine that ran the notebook
MACHINE_PATH = re.compile(r"(?<![\w.])(/tmp/|/var/folders/|/root/|/home/\w|/Users/\w|/work/|[\w/.-]*site-packages/)")


def _outputs(nb):
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            text = o.get("text") or "".join("".join(v) if isinstance(v, list) else v
                                            for k, v in o.get("data", {}).items() if k.startswith("text/"))
            yield i, "".join(text) if isinstance(text, list) else text


def test_machine_path_pattern():
    assert MACHINE_PATH.search("folder /tmp/tmp4sgrfuml") and MACHINE_PATH.search("'/root/.cache/finetune_kit'")
    assert not MACHINE_PATH.search("runs/<run_id>/eval and nbs/tutorials/results/cpu_recipe_trials.csv")


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_outputs_hold_no_machine_path(path):
    found = [f"cell {i}: {m.group(0)}" for i, text in _outputs(json.loads(path.read_text()))
             for m in MACHINE_PATH.finditer(text)]
    assert not found, f"{path.name}: outputs name this machine's folders: {found}"
