"""The docs site in a real browser: headless Chromium (Debian's `chromium` package), driven by Playwright.

The site in `_docs/` is what `bash scripts/docs.sh` builds (CI builds it first; the test builds it when it is missing)
and is served on a loopback port. Every page is loaded and must show no console error, no failed request and no
broken image, and each of its links into the site must name a page that exists and, with a `#fragment`, an element on
that page. The home page, an API page and a tutorial must show what they are for, and a query typed into the search
box must find the API page and lead to it. `DOCS_SCREENSHOTS=folder` saves the home page and the search results as PNG.
"""
import functools, http.server, os, re, subprocess, threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT/'_docs'
CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
# Chromium on a closed network: no background connections (they are refused, many at a time), no sandbox as root
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync']
# pages that must exist and what each must show
HOME, API, TUTORIAL = 'index.html', 'config.html', 'tutorials/cpu_recipe.html'


@pytest.fixture(scope='module')
def site():
    "The built site on a loopback port: its base URL"
    if not (SITE/'index.html').exists():
        subprocess.run(['bash', str(ROOT/'scripts'/'docs.sh')], check=True, cwd=ROOT)
    handler = functools.partial(QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_port}/'
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f'no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM to its path)')
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        # Playwright starts Chromium with a fresh, empty profile (its own --user-data-dir) each time
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _pages():
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob('*.html') if '_static' not in p.parts)


@functools.lru_cache(None)
def _ids(page):
    "The element ids on a built page"
    return set(re.findall(r'\bid="([^"]+)"', (SITE/page).read_text(encoding='utf-8')))


def _open(browser, url):
    "Load `url` in a new page; the console errors, failed requests and uncaught exceptions it caused"
    page = browser.new_page(viewport={'width': 1400, 'height': 1000})
    problems = []
    page.on('console', lambda m: m.type == 'error' and problems.append(f'console: {m.text} ({m.location.get("url")})'))
    page.on('pageerror', lambda e: problems.append(f'exception: {e}'))
    page.on('requestfailed', lambda r: problems.append(f'request failed: {r.url} ({r.failure})'))
    page.on('response', lambda r: r.status >= 400 and problems.append(f'HTTP {r.status}: {r.url}'))
    page.goto(url, wait_until='networkidle')
    return page, problems


def _check(page, base, name):
    "Broken images and links into the site that lead nowhere, on the loaded `page` (the site page `name`)"
    bad = [f'image not shown: {src}' for src in page.eval_on_selector_all(
        'img', 'els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.currentSrc || e.src)')]
    for href in set(page.eval_on_selector_all('a[href]', 'els => els.map(e => e.href)')):
        url, frag = urldefrag(href)
        if not url.startswith(base): continue  # outside the site
        target = unquote(urlsplit(url).path[len(urlsplit(base).path):]) or 'index.html'
        if target.endswith('/'): target += 'index.html'
        if not (SITE/target).is_file(): bad.append(f'link to a missing page: {href}')
        elif frag and target.endswith('.html') and unquote(frag) not in _ids(target):
            bad.append(f'link to a missing anchor: {href}')
    return [f'{name}: {b}' for b in bad]


def test_every_page_loads_clean(site, browser):
    "Each page loads with no console error, failed request, broken image or broken link into the site"
    pages = _pages()
    for must in (HOME, API, TUTORIAL, 'search.html'): assert must in pages, f'{must} was not built'
    problems = []
    for name in pages:
        page, errs = _open(browser, site + name)
        problems += [f'{name}: {e}' for e in errs] + _check(page, site, name)
        page.close()
    assert not problems, '\n'.join(problems)


def test_home_api_and_tutorial_pages(site, browser):
    "The three kinds of page show what they are for: navigation, API signatures, saved outputs and plots"
    page, errs = _open(browser, site + HOME)
    assert page.locator('h1').first.inner_text() == 'finetune-kit'
    nav = page.locator('nav.bd-docs-nav')
    for section in ('Tutorials', 'Library', 'Workbooks'): assert nav.get_by_text(section, exact=True).count() == 1
    nav.get_by_role('link', name='Config', exact=True).click()
    page.wait_for_load_state('networkidle')
    assert page.url == site + API
    # show_doc: a heading per exported name with its signature
    assert page.locator('h3', has_text='RunConfig').count() >= 1
    assert any('def RunConfig(' in t for t in page.locator('div.cell_output pre').all_inner_texts())
    page.close()
    page, errs2 = _open(browser, site + TUTORIAL)
    # a tutorial keeps its saved outputs: text and at least one plot
    assert page.locator('div.cell_output').count() > 5
    assert page.locator('div.cell_output img').count() >= 1
    page.close()
    assert not errs + errs2, '\n'.join(errs + errs2)


def test_search_finds_the_api_page(site, browser):
    "A query typed into the search box lists the API page, and its result leads there"
    page, errs = _open(browser, site + HOME)
    page.locator('.search-button-field').first.click()
    box = page.locator('#pst-search-dialog input[type=search]')
    box.fill('RunConfig')
    box.press('Enter')
    page.wait_for_url(re.compile(r'search\.html\?q=RunConfig'))
    results = page.locator('#search-results ul.search li a')
    results.first.wait_for(timeout=30_000)
    page.wait_for_load_state('networkidle')  # the results page fetches each hit for its snippet: let it finish first
    hrefs = results.evaluate_all('els => els.map(e => e.href)')
    assert any(urldefrag(h)[0] == site + API for h in hrefs), hrefs
    if shots := os.environ.get('DOCS_SCREENSHOTS'):
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=f'{shots}/search.png')
    page.locator(f'#search-results ul.search li a[href^="{API}"]').first.click()
    page.wait_for_load_state('networkidle')
    assert urldefrag(page.url)[0] == site + API
    assert page.locator('h1').first.inner_text().startswith('Config')
    if shots:
        home, _ = _open(browser, site + HOME)
        home.screenshot(path=f'{shots}/home.png')
        home.close()
    page.close()
    assert not errs, '\n'.join(errs)
