"""Build README.md and the docs site in `_docs/` from the notebooks, offline (`bash scripts/docs.sh` runs this).

1. nbdev's `proc_nbs` prepares every notebook under nbs/ in `_proc/`: `show_doc` API docs, hidden and exported cells
   removed, names in backticks linked to their docs. Its processors are set under `[tool.nbdev]` in pyproject.toml
   (`nbdev_procs.py` beside this file says why two differ from nbdev's defaults). Only notebooks changed since the
   last build are prepared again.
2. README.md: the prepared `index.ipynb` as GitHub Markdown (nbconvert, then pandoc from `pypandoc-binary`), which
   is what `nbdev-readme` does through Quarto; Quarto cannot be installed offline (the `quarto-cli` sdist downloads
   its binary while it installs). Links stay usable where README.md is read: beside the notebooks.
3. The Sphinx sources in `_proc/.site/`: each notebook under the page name nbdev's doc links use (`00_config.ipynb`
   -> `config`), its `#|` cell options as the cell tags myst-nb reads, links to the hosted site made relative, and
   the navigation (`nbs/sidebar.yml`) as a hidden table of contents on the home page.
4. Sphinx renders them with myst-nb (the outputs the notebooks were saved with; nothing is executed) and
   sphinx-book-theme into `_docs/`, with Sphinx's search index, which works offline. Warnings fail the build.
"""
import argparse, fnmatch, json, os, posixpath, re, shutil, subprocess, sys, time, warnings
from pathlib import Path

import yaml
from nbdev.config import get_config, nbpath2html

HERE = Path(__file__).resolve().parent

# Quarto cell options that nbdev leaves in a prepared cell, as myst-nb cell tags
_TAGS = {('echo', 'false'): 'remove-input', ('output', 'false'): 'remove-output', ('include', 'false'): 'remove-cell',
         ('code-fold', 'true'): 'hide-input'}
_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_re_md_link = re.compile(r'(\]\()([^)\s]+)(\))')
_re_md_img = re.compile(r'!\[[^\]]*\]\(([^)\s]+)\)')
_re_rule = re.compile(r'^\s*---\s*\n')
_re_href = re.compile(r'((?:href|src)=")([^"]+)(")')


def _src(x): return ''.join(x) if isinstance(x, list) else (x or '')


def _slug(s):
    "The anchor myst-parser gives a heading (`myst_heading_anchors`): GitHub's rule"
    return re.sub(r'[^\w\- ]', '', s.strip().lower().replace(' ', '-'))


class Pages:
    "The site's pages: nbdev's page name (`config.html`) of each notebook under `nbs/`, and links between them"
    def __init__(self, nbs, doc_url):
        self.nbs, self.base = nbs, doc_url.rstrip('/') + '/'
        self.src = {}  # page name ('tutorials/cpu_recipe') -> notebook path relative to nbs/
        for f in sorted(nbs.rglob('*.ipynb')):
            rel = f.relative_to(nbs)
            if any(p.startswith(('.', '_')) for p in rel.parts): continue
            name = nbpath2html(rel).with_suffix('').as_posix()
            if name in self.src: sys.exit(f'docs: {rel} and {self.src[name]} would both be the page {name}.html')
            self.src[name] = rel

    def page(self, rel): return nbpath2html(rel).with_suffix('').as_posix()

    def _target(self, url, page, ext):
        """A link on `page` to the site as a relative link to the page (`ext` `.html`) or to the notebook myst-nb
        resolves (`.ipynb`); other links unchanged"""
        if url.startswith(self.base): path = url[len(self.base):]
        elif re.match(r'^[a-z][a-z0-9+.-]*:|^[#/]', url): return url
        else: path = posixpath.normpath(posixpath.join(posixpath.dirname(page), url))
        path, _, frag = path.partition('#')
        if not path.endswith(('.html', '.ipynb')): return url
        name = self.page(path) if path.endswith('.ipynb') else (path[:-5] or 'index')
        if name not in self.src: return url
        rel = posixpath.relpath(name, posixpath.dirname(page) or '.') + ext
        # nbdev links private names too (`_f`), which get no `show_doc` heading: link their page
        return rel + (f'#{_slug(frag)}' if frag and not frag.startswith('_') else '')

    def relink(self, text, page):
        "Links in Markdown or HTML `text` on `page` to the site's pages, relative (the site works offline)"
        md = lambda m: m.group(1) + self._target(m.group(2), page, '.ipynb') + m.group(3)
        html = lambda m: m.group(1) + self._target(m.group(2), page, '.html') + m.group(3)  # raw HTML: Sphinx leaves it
        return _re_href.sub(html, _re_md_link.sub(md, text))


def prepare(cfg, force=False):
    "nbdev's preparation of every notebook, in `_proc/`"
    from nbdev.serve import proc_nbs
    return proc_nbs(cfg.nbs_path, n_workers=int(os.environ.get('DOCS_WORKERS', min(os.cpu_count() or 1, 4))),
                    force=force)


def _readme_links(md, doc_url, nbs):
    """README.md is read beside the notebooks, not on the site: names linked to their API docs stay plain code, and
    links to notebooks point into `nbs` (the repository's host shows notebooks)"""
    md = re.sub(r'\[(`[^`\n]+`(?:\(\))?)\]\(' + re.escape(doc_url.rstrip('/') + '/') + r'[^)\s]*\)', r'\1', md)
    def sub(m):
        url = m.group(2)
        if re.match(r'^[a-z][a-z0-9+.-]*:|^[#/]', url) or not url.partition('#')[0].endswith('.ipynb'): return m.group(0)
        return m.group(1) + posixpath.join(nbs, url) + m.group(3)
    return _re_md_link.sub(sub, md)


def readme(cache, cfg):
    "README.md from the prepared home page, as GitHub Markdown"
    import nbformat, pypandoc
    from nbconvert import MarkdownExporter
    with warnings.catch_warnings():  # the cells nbdev adds have no ids
        warnings.simplefilter('ignore', nbformat.validator.MissingIDFieldWarning)
        md, _ = MarkdownExporter().from_notebook_node(nbformat.read(cache/cfg.readme_nb, as_version=4))
    md = _readme_links(md, cfg.doc_host.rstrip('/') + cfg.doc_baseurl, cfg.nbs_path.relative_to(cfg.config_path).as_posix())
    gfm = pypandoc.convert_text(md, 'gfm', format='markdown', extra_args=['--wrap=preserve'])
    (cfg.config_path/'README.md').write_text(gfm, encoding='utf-8')


def _tag_cell(cell, pages, page, nb_dir):
    "Quarto cell options -> myst-nb tags (the option lines go); site links made relative"
    if cell['cell_type'] == 'markdown':
        cell['source'] = pages.relink(_src(cell['source']), page)
        return cell
    if cell['cell_type'] != 'code': return cell
    lines, tags = _src(cell['source']).splitlines(), []
    while lines and (m := _re_opt.match(lines[0])):
        tag = _TAGS.get((m.group(1), m.group(2).strip('"\'').lower()))
        if tag: tags.append(tag)
        lines.pop(0)
    cell['source'] = '\n'.join(lines)
    if tags: cell.setdefault('metadata', {})['tags'] = sorted(set(cell['metadata'].get('tags', []) + tags))
    for o in cell.get('outputs', []):
        d = o.get('data', {})
        if 'text/html' in d: d['text/html'] = pages.relink(_src(d['text/html']), page)
        if 'text/markdown' not in d: continue
        # `show_doc` opens with a rule (`---`), which docutils allows only between sections, not in an output
        md = d['text/markdown'] = pages.relink(_re_rule.sub('', _src(d['text/markdown'])), page)
        # an output whose images lay in a folder the notebook made (a temporary run folder) cannot show them: as text
        gone = [u for u in _re_md_img.findall(md) if not re.match(r'^[a-z]+:', u) and not (nb_dir/u).exists()]
        if gone and 'text/plain' in d:
            print(f'docs: {page}: an output shows {", ".join(gone)}, not saved beside the notebook: shown as text')
            del d['text/markdown']
    return cell


def _toctree(sections, pages):
    "The site's navigation as hidden MyST toctrees, one per section of `nbs/sidebar.yml`"
    taken, res = set(), []
    for s in sections:
        names = [n for n, rel in sorted(pages.src.items(), key=lambda x: x[1].as_posix())
                 if fnmatch.fnmatch(rel.as_posix(), s['glob']) and n != 'index' and n not in taken]
        taken.update(names)
        if names: res.append(f":::{{toctree}}\n:hidden:\n:caption: {s['caption']}\n\n" + '\n'.join(names) + '\n:::')
    missing = set(pages.src) - taken - {'index'}
    if missing: sys.exit(f"docs: no section of nbs/sidebar.yml takes {', '.join(sorted(map(str, missing)))}")
    return res


def _write(path, text):
    "Write `text` unless `path` already holds it (Sphinx rebuilds only pages whose source changed)"
    if path.exists() and path.read_text(encoding='utf-8') == text: return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding='utf-8')


def sources(cache, cfg):
    "The Sphinx sources in `_proc/.site/`, from the prepared notebooks"
    pages = Pages(cfg.nbs_path, cfg.doc_host.rstrip('/') + cfg.doc_baseurl)
    site = cache/'.site'
    sections = yaml.safe_load((cfg.nbs_path/'sidebar.yml').read_text(encoding='utf-8'))
    keep = set()
    for name, rel in pages.src.items():
        nb = json.loads((cache/rel).read_text(encoding='utf-8'))
        nb['cells'] = [_tag_cell(c, pages, name, (cfg.nbs_path/rel).parent) for c in nb['cells']]
        nb['metadata'].setdefault('language_info', {'name': 'python', 'pygments_lexer': 'ipython3'})
        if name == 'index':
            nb['cells'] += [{'cell_type': 'markdown', 'metadata': {}, 'source': t} for t in _toctree(sections, pages)]
        for i, c in enumerate(nb['cells']): c.setdefault('id', f'docs-{i}')  # cells nbdev adds have none
        _write(site/f'{name}.ipynb', json.dumps(nb, indent=1, ensure_ascii=False))
        keep.add(site/f'{name}.ipynb')
    for f in site.rglob('*.ipynb'):  # pages whose notebook is gone
        if f not in keep: f.unlink()
    return site, pages


def sphinx(site, out):
    "The site in `out`: Sphinx with myst-nb and sphinx-book-theme; warnings are errors"
    build = site.parent/'.build'  # myst-nb writes beside Sphinx's output folder: keep both in `_proc/`
    res = subprocess.run([sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-W', '--keep-going', '-c', str(HERE),
                          '-d', str(build/'doctrees'), str(site), str(build/'html')])
    if res.returncode: sys.exit(f'docs: sphinx-build failed (exit {res.returncode})')
    if out.exists(): shutil.rmtree(out)
    shutil.copytree(build/'html', out, ignore=shutil.ignore_patterns('.buildinfo', '_sources'))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--force', action='store_true', help='prepare every notebook again, not only changed ones')
    ap.add_argument('--readme-only', action='store_true', help='README.md only, no site')
    a = ap.parse_args(argv)
    cfg = get_config()
    os.chdir(cfg.config_path)
    t0 = time.time()
    cache = prepare(cfg, a.force)
    t1 = time.time()
    readme(cache, cfg)
    if a.readme_only: return
    site, pages = sources(cache, cfg)
    out = cfg.config_path/cfg.doc_path.name
    sphinx(site, out)
    missing = [str(rel) for name, rel in pages.src.items() if not (out/f'{name}.html').exists()]
    if missing: sys.exit(f"docs: no page for {', '.join(missing)}")  # a page that failed must not pass unnoticed
    print(f'docs: {out.name}/index.html ({len(pages.src)} pages) in {time.time() - t0:.0f} s '
          f'(nbdev {t1 - t0:.0f} s, Sphinx {time.time() - t1:.0f} s)')


if __name__ == '__main__': main()
