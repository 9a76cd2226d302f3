"""nbdev settings and a processor for the docs site (`scripts/docs/build.py`): API docs come from the exported modules.

nbdev's default `exec_show_docs` runs every export cell and every cell that imports something, to fill in the
`show_doc` cells it adds after each export. Example cells that import a helper then run too: slowly, and with a
`NameError` when they use a name from a cell that did not run. `pyproject.toml` skips it
(`skip_procs = "exec_show_docs"`) and adds `show_docs_from_module` (`doc_procs`), which imports the notebook's
`default_exp` module and renders each `show_doc` from it. Pages keep the outputs their notebooks were saved with.

nbdev's `FrontmatterProc` is skipped too: it turns a notebook's `# Title` / `> summary` cell into Quarto front matter
and drops the rest of the cell (a workbook's prose), while Sphinx takes a page's title from its first heading.
"""
import ast, inspect, json, re, sys
from importlib import import_module
from pathlib import Path

from nbdev.config import get_config
from nbdev.doclinks import NbdevLookup
from nbdev.process import Processor
from nbdev.showdoc import show_doc

_re_default_exp = re.compile(r'^\s*#\|\s*default_exp\s+(\S+)', re.MULTILINE)
_re_show_doc = re.compile(r'^show_doc\(', re.MULTILINE)


def _module_of(path):
    "The module that notebook `path` exports to (`default_exp`), or None"
    try: cells = json.loads(Path(path).read_text(encoding='utf-8'))['cells']
    except (OSError, ValueError, KeyError, TypeError): return None
    for c in cells:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        if c['cell_type'] == 'code' and (m := _re_default_exp.search(src)):
            name = m.group(1).removesuffix('.__init__')
            return f"{get_config().lib_path.name}.{name}"


def _fix_source_line(md, node, ns):
    "nbdev 3.3 links sources as `file.py#LNone` (its line lookup misses qualified names): put the real line in"
    if '#LNone' not in md: return md
    try:
        obj = inspect.unwrap(eval(compile(ast.Expression(node.args[0]), '<show_doc>', 'eval'), ns))
        return md.replace('#LNone', f'#L{inspect.getsourcelines(obj)[1]}')
    except Exception: return md.replace('#LNone', '')


class show_docs_from_module(Processor):
    "Give each `show_doc` cell its markdown output, from the notebook's exported module"
    def begin(self):
        self.ns, self.lookup = None, None
        mod = _module_of(getattr(self.nb, 'path_', ''))
        if not mod: return
        try: self.ns = {**vars(import_module(mod)), 'show_doc': show_doc}
        except Exception as e: print(f'docs: cannot import {mod} for its API docs: {e!r}', file=sys.stderr)
        self.lookup = NbdevLookup()

    def cell(self, cell):
        if self.ns is None or cell.cell_type != 'code' or not _re_show_doc.search(cell.source): return
        code = '\n'.join(l for l in cell.source.splitlines() if not l.lstrip().startswith('#|'))
        outs = []
        try:
            for node in ast.parse(code).body:
                if not isinstance(node, ast.Expr): continue
                res = eval(compile(ast.Expression(node.value), '<show_doc>', 'eval'), self.ns)
                if hasattr(res, '_repr_markdown_'):
                    md = _fix_source_line(self.lookup.linkify(res._repr_markdown_()), node.value, self.ns)
                    outs.append({'output_type': 'display_data', 'data': {'text/markdown': md}, 'metadata': {}})
        except Exception as e:
            print(f'docs: {Path(self.nb.path_).name}: {code.strip()} failed: {e!r}', file=sys.stderr)
            return
        cell['outputs'] = outs
