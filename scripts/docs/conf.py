"""Sphinx configuration of the docs site (`bash scripts/docs.sh`).

The sources are the notebooks as `scripts/docs/build.py` prepares them in `_proc/.site/`; myst-nb renders the
outputs they were saved with (nothing is executed), sphinx-book-theme lays the pages out, and Sphinx's own search
index makes search work offline. The navigation is `nbs/sidebar.yml`.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if sys.version_info >= (3, 11): import tomllib
else: import tomli as tomllib
_meta = tomllib.loads((ROOT/'pyproject.toml').read_text(encoding='utf-8'))

project = _meta['tool']['nbdev']['title']
author = 'finetune-kit maintainers'
copyright = author
extensions = ['myst_nb']
exclude_patterns = ['**/.*', 'README.md']

# notebooks show the outputs they were saved with; `show_doc` output is Markdown with Quarto-style link attributes
nb_execution_mode = 'off'
nb_render_markdown_format = 'myst'
myst_enable_extensions = ['attrs_inline', 'colon_fence', 'dollarmath']
myst_heading_anchors = 4
nb_merge_streams = True
# widget outputs (progress bars) need JavaScript from a CDN: show their text instead, and load none
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [('html', 'application/vnd.jupyter.widget-view+json', None),
                              ('html', 'application/vnd.jupyter.widget-state+json', None)]
suppress_warnings = ['myst.header']  # `show_doc` headings are H3, wherever they stand

html_theme = 'sphinx_book_theme'
html_title = project
html_static_path = ['_static']
html_css_files = ['site.css']
html_favicon = '_static/favicon.svg'
html_context = {'default_mode': 'light'}  # unset, the theme logs an error in the browser's console
html_theme_options = {
    'repository_url': _meta['project']['urls']['Repository'],
    'use_repository_button': True,
    'home_page_in_toc': True,
    'show_toc_level': 2,
    'navigation_with_keys': False,
    'navbar_persistent': [],  # one search box, in the sidebar
    'use_download_button': False,  # it offers the prepared notebook, not the one in nbs/
}
html_last_updated_fmt = None
html_show_sourcelink = False
html_copy_source = False
