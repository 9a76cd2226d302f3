"""README.md is nbs/index.ipynb as GitHub Markdown (`bash scripts/docs.sh` writes it; CI checks it is up to date)."""
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_the_home_page_as_markdown():
    readme = (ROOT/"README.md").read_text(encoding="utf-8")
    cells = json.loads((ROOT/"nbs"/"index.ipynb").read_text(encoding="utf-8"))["cells"]
    headings = [l for c in cells if c["cell_type"] == "markdown" for l in "".join(c["source"]).splitlines()
                if re.match(r"#{1,3} \S", l)]
    assert headings and headings[0].startswith("# "), "nbs/index.ipynb opens with its title"
    lines = readme.splitlines()
    assert lines[0] == headings[0]
    missing = [h for h in headings if h not in lines]
    assert not missing, f"README.md lacks these headings of nbs/index.ipynb, each on its own line: {missing}"
    assert "['" not in readme and "\\[‘" not in readme, "README.md holds a notebook cell's source list, not its text"
    # links into the docs site are for the site; on the repository's page notebooks are linked in nbs/
    assert not re.search(r"\]\((?!https?:|#|nbs/)[^)]*\.ipynb", readme)
