"""The book as a reader's browser shows it: the site built, served, and every page of it loaded in Chromium.

`mkdocs build --strict` proves that every include and link resolves; it cannot see what a browser makes of the
result. Chapter 6 once rendered its Python as Markdown (includes left outside their fences: comments became
giant headings, and the table of contents stopped at "The switches"), and tables ran 1,300 and 2,100 px wide
in a column of under 1,000, all with a strict build passing. So these tests build the site of the repository
they sit in (a copy with a planted bug tests the copy), serve it on 127.0.0.1 from a thread, and load each
page once in headless Chromium at 1,280 px, driven by selenium through Debian's chromedriver. On every page:
nothing wider than the window or the text column (a table must fit, not scroll; code may scroll, but not
Python), every mermaid diagram drawn, every embedded drawing (the flamegraphs) within its box, every Python
include shown as code, and no error in the browser's console. Then the search finds a word, and chapter 7's
two loops stand side by side. Two checks need no browser: every Python include sits in a python fence of its
chapter's Markdown, and no drawing under docs/ names a path of the machine that drew it.

The tradeoff: a real browser is slow to start and large to install (Debian's chromium and chromium-driver,
which `make test` installs as root), and measures one width, the 1,280 px laptop the layout is tuned for.
Where the browser, its driver, selenium or mkdocs is missing, the tests skip with the reason, and fail in CI
(CI=true). Every wait is for a condition, bounded generously: a busy two-core laptop must pass.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import pytest

from conftest import require_tool, skip_unless_ci

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

# Building the site and loading every page take a minute on a busy laptop: more than the suite's 120 s default
# would leave for the first test, which pays for both.
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parent.parent  # the repository this file sits in, whichever copy that is
DOCS = REPO / "docs"
HOST = "127.0.0.1"
WINDOW_WIDTH = 1280
WINDOW_HEIGHT = 1000
PATIENCE_S = 90.0  # the bound of every wait: a page of this book loads in a second, on a busy machine in ten
# As Chromium was run by hand on the machines this was written on: headless, root (no sandbox), no GPU, and
# nothing fetched on its own account (no QUIC probe, no component or sync traffic, no first-run page).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
# A code include: `--8<-- "phase6_perf/app.py:respond"`, indented if it sits in an admonition or a tab.
INCLUDE = re.compile(r'^\s*--8<-- "(?P<spec>[^"]+)"\s*$')
# A fence's opening or closing line: its indentation, its backticks or tildes, its info string.
FENCE = re.compile(r"^(?P<indent>\s*)(?P<marks>`{3,}|~{3,})\s*(?P<info>.*)$")
# A section marker inside a source file: `# --8<-- [start:respond]`. The rendered code never shows it.
SECTION_MARKER = re.compile(r"--8<-- \[(?:start|end):[\w-]+\]")
# The elements of an SVG whose text a reader sees (or reads on hovering), as ElementTree names them.
SVG_TEXTS = {f"{{http://www.w3.org/2000/svg}}{tag}" for tag in ("text", "tspan", "title", "desc")}

# What the browser measures on a page, in one script, once every diagram is drawn. Hidden parts are shown
# first (every <details> opened, every tab's content displayed): their tables must fit too. Then every
# element of the article is compared with the article's text column, except what is inside a block of code,
# which may scroll sideways (a console's output has long lines) and is checked as one box. Python may not
# scroll: the layout is as wide as it is (docs/stylesheets/extra.css) for the repository's 110 columns.
# Material wraps each table in a scroll wrapper whose negative margins reach past the column by design: the
# wrapper must not scroll, and the table inside it must fit the column like everything else. An inline
# `code` that wraps at the column's edge reaches 1 to 3 px past it with its padding, invisibly: 4 px are
# let pass. Of an element too wide, only the outermost is named, not each row and cell of a table.
MEASURE_PAGE = """
const article = document.querySelector("article.md-content__inner");
for (const details of article.querySelectorAll("details")) details.open = true;
const reveal = document.createElement("style");
reveal.textContent = ".tabbed-set > .tabbed-content > .tabbed-block { display: block !important; }";
document.head.append(reveal);

const column = article.getBoundingClientRect();
const slack = 4;
const headings = [...article.querySelectorAll("h1, h2, h3, h4, h5, h6")];
const describe = (element) => {
  const before = headings.filter(
    (heading) => heading.compareDocumentPosition(element) & Node.DOCUMENT_POSITION_FOLLOWING);
  const heading = before.length ? before[before.length - 1].textContent.replace("¶", "").trim() : "";
  const where = heading ? ` under "${heading}"` : "";
  const text = element.textContent.replace(/\\s+/g, " ").trim().slice(0, 50);
  return `<${element.tagName.toLowerCase()}${element.className && typeof element.className === "string"
    ? ` class="${element.className}"` : ""}> "${text}"${where}`;
};
const problems = [];
const page = document.documentElement;
if (page.scrollWidth > page.clientWidth) {
  problems.push(`the page is ${page.scrollWidth} px wide in a window of ${page.clientWidth} px`);
}
const isCode = (element) => element.matches("pre, pre > code");
const scrolls = (element) => ["auto", "scroll"].includes(getComputedStyle(element).overflowX);
const insideCode = (element) => {
  const parent = element.parentElement;
  return parent !== null && isCode(parent) && scrolls(parent);
};
const walker = document.createTreeWalker(article, NodeFilter.SHOW_ELEMENT, {
  acceptNode: (element) => insideCode(element) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
});
const tooWide = [];
for (let element = walker.nextNode(); element; element = walker.nextNode()) {
  const box = element.getBoundingClientRect();
  if (box.width === 0 && box.height === 0) continue;  // not displayed (an <object>'s fallback, say)
  const python = element.matches(".language-python pre > code");
  if (scrolls(element) && (python || !isCode(element)) && element.scrollWidth > element.clientWidth + 1) {
    const widths = `${element.scrollWidth} px in ${element.clientWidth} px`;
    problems.push(`${describe(element)} scrolls sideways: ${widths}`);
  }
  if (element.matches(".md-typeset__scrollwrap, .md-typeset__table")) continue;
  if (tooWide.some((outer) => outer.contains(element))) continue;
  if (box.left < column.left - slack || box.right > column.right + slack) {
    tooWide.push(element);
    problems.push(`${describe(element)} spans ${Math.round(box.left)}-${Math.round(box.right)} px,`
      + ` the column ${Math.round(column.left)}-${Math.round(column.right)} px`);
  }
}
return {
  problems: problems,
  code: [...article.querySelectorAll("pre > code")].map((code) => code.textContent),
  python_blocks: article.querySelectorAll(".language-python.highlight").length,
};
"""

# Once MEASURE_PAGE has shown every tab, every <object> of the article (the flamegraphs) loads its SVG. On
# load, a flamegraph's script queues the fitting of its drawing to the column (a zero-delay timeout): a
# zero-delay timeout of ours in the same window runs after it. Then no text may be drawn past the edges of
# the <object>, which clip it: py-spy's own title, its command line, was cut at both ends.
EMBEDS_LOADED = """
return [...document.querySelectorAll("article object")].every((embed) => embed.contentDocument !== null
  && embed.contentDocument.readyState === "complete" && embed.contentDocument.querySelector("svg") !== null);
"""
MEASURE_EMBEDS = """
const done = arguments[arguments.length - 1];
const embeds = [...document.querySelectorAll("article object")];
const settled = embeds.map((embed) => new Promise((resolve) => embed.contentWindow.setTimeout(resolve, 0)));
Promise.all(settled).then(() => {
  const problems = [];
  for (const embed of embeds) {
    const width = embed.clientWidth;
    for (const text of embed.contentDocument.querySelectorAll("text")) {
      const box = text.getBoundingClientRect();
      if (box.width > 0 && (box.left < -1 || box.right > width + 1)) {
        problems.push(`${embed.getAttribute("data")}: "${text.textContent.slice(0, 60)}" is drawn at`
          + ` ${Math.round(box.left)}-${Math.round(box.right)} px in an <object> of 0-${width} px`);
      }
    }
  }
  done(problems);
});
"""


@dataclass(frozen=True)
class Include:
    """One `--8<-- "path.py:section"` line of a chapter's Markdown."""

    line: int
    spec: str
    fence: str | None  # the info string of the fence it sits in ("python title=..."), None if outside one

    def code(self) -> str:
        """The lines the include puts on the page, as `normalised` compares them."""
        path, _, section = self.spec.partition(":")
        lines = (REPO / path).read_text().splitlines()
        if section:
            start = next(n for n, text in enumerate(lines) if f"--8<-- [start:{section}]" in text)
            end = next(n for n, text in enumerate(lines) if f"--8<-- [end:{section}]" in text)
            lines = lines[start + 1 : end]
        return normalised("\n".join(line for line in lines if not SECTION_MARKER.search(line)))


@dataclass(frozen=True)
class Page:
    """A page of the built site as the browser left it: what is wrong with it, and what code it shows."""

    name: str  # its path in the site, `phase6.html`
    layout_problems: list[str]
    diagram_problems: list[str]
    embed_problems: list[str]
    console_errors: list[str]
    code_blocks: list[str]  # the text of every code block, normalised
    python_blocks: int  # how many of them Pygments highlighted as Python

    @property
    def source(self) -> Path:
        return DOCS / Path(self.name).with_suffix(".md")


def normalised(code: str) -> str:
    """Code without its indentation and blank lines: an include is shown dedented (dedent_subsections)."""
    return "\n".join(line.strip() for line in code.splitlines() if line.strip())


def code_includes(markdown: Path) -> list[Include]:
    """The includes of Python files in a chapter, each with the fence it sits in, if any."""
    includes: list[Include] = []
    fence: re.Match[str] | None = None
    for number, line in enumerate(markdown.read_text().splitlines(), start=1):
        marks = FENCE.match(line)
        if marks is not None:
            if fence is None:
                fence = marks
                continue
            # Only a run of the same marks, at least as long, with no info string, closes a fence.
            closing = fence["marks"]
            if marks["marks"][0] == closing[0] and len(marks["marks"]) >= len(closing) and not marks["info"]:
                fence = None
                continue
        include = INCLUDE.match(line)
        if include is not None and include["spec"].partition(":")[0].endswith(".py"):
            includes.append(Include(number, include["spec"], fence["info"] if fence else None))
    return includes


# --------------------------------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as `make docs` builds it, from this repository, into a temporary directory."""
    mkdocs = Path(sys.executable).with_name("mkdocs")  # the virtualenv's, beside the interpreter
    if not mkdocs.exists():
        skip_unless_ci("mkdocs is not installed (pip install '.[docs]')")
    site_dir = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stderr[-5000:]}"
    return site_dir


@pytest.fixture(scope="module")
def origin(site: Path) -> Iterator[str]:
    """The site served over HTTP on a free port, as a reader's `mkdocs serve` would: from a thread of ours."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # a line per request on stderr says nothing a failing test does not

    handler = functools.partial(QuietHandler, directory=str(site))
    with http.server.ThreadingHTTPServer((HOST, 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
        thread.start()
        yield f"http://{HOST}:{server.server_address[1]}/"
        server.shutdown()
        thread.join()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium at 1,280 px, its console log kept. The browser and its driver are named by path, so
    selenium never starts selenium-manager, which would download a browser and a driver of its choosing."""
    if importlib.util.find_spec("selenium") is None:
        skip_unless_ci("selenium is not installed (pip install '.[dev]')")
    chromium = require_tool("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        skip_unless_ci("chromedriver is not installed (Debian: apt-get install chromium-driver)")
    from selenium import webdriver  # noqa: PLC0415 (only once we know it is installed)
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # A fresh profile per run: nothing a previous run (or a reader's own browsing) cached is reused.
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.set_page_load_timeout(PATIENCE_S)
        driver.set_script_timeout(PATIENCE_S)
        yield driver
    finally:
        driver.quit()


def site_pages(site: Path) -> list[str]:
    """Every page of the built site but Material's 404 page: the nav's pages, since the strict build warns of
    (so fails on) a page the nav leaves out."""
    names = sorted(path.relative_to(site).as_posix() for path in site.rglob("*.html"))
    return [name for name in names if name != "404.html"]


def wait_for(driver: WebDriver, condition: str, *args: Any) -> bool:
    """Wait until the script `condition` returns true in the page; False if it never did in PATIENCE_S."""
    from selenium.common.exceptions import TimeoutException  # noqa: PLC0415 (selenium may be absent)
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    try:
        WebDriverWait(driver, PATIENCE_S, poll_frequency=0.2).until(
            lambda driver: driver.execute_script(condition, *args)
        )
    except TimeoutException:
        return False
    return True


def check_diagrams(driver: WebDriver, expected: int) -> list[str]:
    """Wait for Material to replace each of the page's `<pre class="mermaid">` by a drawing; then look inside
    each drawing (a closed shadow root, which WebDriver may open where the page's scripts may not)."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415 (selenium may be absent)

    drawn = "return document.querySelectorAll('article div.mermaid').length === arguments[0]"
    if not wait_for(driver, drawn, expected):
        left = driver.execute_script("return document.querySelectorAll('article pre.mermaid').length")
        return [f"{left} of {expected} mermaid diagrams still text after {PATIENCE_S:.0f} s"]
    problems = []
    for number, diagram in enumerate(driver.find_elements(By.CSS_SELECTOR, "article div.mermaid"), start=1):
        svgs = diagram.shadow_root.find_elements(By.CSS_SELECTOR, "svg")
        if len(svgs) != 1 or svgs[0].get_attribute("aria-roledescription") == "error":
            problems.append(f"mermaid diagram {number} of {expected} is no drawing (a syntax error?)")
    return problems


@pytest.fixture(scope="module")
def pages(browser: WebDriver, site: Path, origin: str) -> list[Page]:
    """Every page loaded once, in the order of its name, and what the browser found on it."""
    loaded = []
    for name in site_pages(site):
        browser.get(origin + name)
        wait_for(browser, "return document.readyState === 'complete'")
        diagrams = (site / name).read_text().count('<pre class="mermaid">')
        diagram_problems = check_diagrams(browser, diagrams)
        measured = browser.execute_script(MEASURE_PAGE)
        if wait_for(browser, EMBEDS_LOADED):
            embed_problems: list[str] = browser.execute_async_script(MEASURE_EMBEDS)
        else:
            embed_problems = [f"an <object> has shown no SVG after {PATIENCE_S:.0f} s"]
        # Everything logged since the previous page's reading: this page's. (selenium leaves get_log untyped.)
        log: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
        errors = [entry["message"] for entry in log if entry["level"] == "SEVERE"]
        loaded.append(
            Page(
                name=name,
                layout_problems=measured["problems"],
                diagram_problems=diagram_problems,
                embed_problems=embed_problems,
                console_errors=errors,
                code_blocks=[normalised(code) for code in measured["code"]],
                python_blocks=measured["python_blocks"],
            )
        )
    return loaded


def fail_on(problems: dict[str, list[str]], what: str) -> None:
    """Fail with every problem of every page, one a line, or pass if there is none."""
    lines = [f"{page}: {problem}" for page, found in problems.items() for problem in found]
    if lines:
        pytest.fail(f"{what}:\n" + "\n".join(lines), pytrace=False)


# --------------------------------------------------------------------------------------------- the tests


def test_every_python_include_sits_inside_a_python_fence() -> None:
    """Read from the Markdown, no browser needed: outside a fence, an include of Python is read as Markdown
    (a `# comment` becomes a heading), and the strict build does not mind."""
    wrong = {
        markdown.name: [
            f"line {include.line}: --8<-- {include.spec!r} is "
            + (f"inside a {include.fence.split()[0]!r} fence" if include.fence else "outside any fence")
            for include in code_includes(markdown)
            if include.fence is None or include.fence.split()[0] not in {"python", "py"}
        ]
        for markdown in sorted(DOCS.rglob("*.md"))
    }
    fail_on(wrong, "Python included outside a python fence, so rendered as Markdown")


def test_every_page_fits_the_window_and_its_column(pages: list[Page]) -> None:
    problems = {page.name: page.layout_problems for page in pages}
    fail_on(problems, f"wider than the window or the text column at {WINDOW_WIDTH} px")


def test_every_mermaid_diagram_is_drawn(pages: list[Page]) -> None:
    problems = {page.name: page.diagram_problems for page in pages}
    fail_on(problems, "mermaid diagrams not drawn")


def test_every_embedded_drawing_fits_its_box(pages: list[Page]) -> None:
    problems = {page.name: page.embed_problems for page in pages}
    fail_on(problems, "embedded drawings clipped")


def test_every_python_include_is_shown_as_python_code(pages: list[Page]) -> None:
    """Each include's lines appear in one code block of the page, and the page has at least as many
    Python blocks as includes: an include rendered as Markdown fails both."""
    problems: dict[str, list[str]] = {}
    for page in pages:
        if not page.source.exists():
            continue  # a page with no Markdown of its own has no includes
        includes = code_includes(page.source)
        missing = [
            f"the code of {include.spec} (line {include.line}) is in no code block"
            for include in includes
            if not any(include.code() in block for block in page.code_blocks)
        ]
        if page.python_blocks < len(includes):
            missing.append(f"{page.python_blocks} Python code blocks for {len(includes)} includes of Python")
        problems[page.name] = missing
    fail_on(problems, "Python includes not shown as Python code")


def test_no_page_logs_an_error_in_the_console(pages: list[Page]) -> None:
    """Errors of the page's scripts, and every resource it failed to load: the site is offline by design
    (mermaid and the search worker's shim are vendored), so a request that fails is one to a missing file."""
    problems = {page.name: page.console_errors for page in pages}
    fail_on(problems, "errors in the browser's console")


def test_no_drawing_names_a_path_of_the_machine_that_drew_it() -> None:
    """No text of an SVG under docs/ (what a reader sees, or reads on hovering) holds an absolute path: a
    flamegraph once showed /work/main/.venv/bin/python and py-spy's whole command line (bench/flame.py now
    rewrites what py-spy writes)."""
    absolute_path = re.compile(r"""(?:^|[\s"'(=:])(/[\w.+-]+/\S*)""")
    problems: dict[str, list[str]] = {}
    for drawing in sorted(DOCS.rglob("*.svg")):
        texts = [node.text or "" for node in ElementTree.parse(drawing).iter() if node.tag in SVG_TEXTS]
        found = {match[1] for text in texts for match in absolute_path.finditer(text)}
        problems[drawing.relative_to(REPO).as_posix()] = sorted(found)
    fail_on(problems, "absolute paths in drawings")


def test_search_shows_results_for_a_word_of_the_book(browser: WebDriver, origin: str) -> None:
    """Material's search runs in a worker (through the iframe-worker shim, from the offline plugin's index):
    typing a word into the box shows results, each a link to a page of the site."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415 (selenium may be absent)

    browser.get(origin + "index.html")
    wait_for(browser, "return document.readyState === 'complete'")
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    box.click()
    box.send_keys("epoll")
    results = "return document.querySelectorAll('.md-search-result__item').length > 0"
    assert wait_for(browser, results), f"no search result for 'epoll' after {PATIENCE_S:.0f} s"
    links = [
        link.get_attribute("href") or ""
        for link in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")
    ]
    assert links and all(link.startswith(origin) for link in links), links


def test_readiness_and_completion_stand_side_by_side(browser: WebDriver, origin: str) -> None:
    """Chapter 7's prose reads the two loops "on the left" and "on the right": at 1,280 px they are in one
    row, each drawn at least a third of the column wide (a narrow screen stacks them)."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415 (selenium may be absent)

    browser.get(origin + "phase7.html")
    drawn = "return document.querySelectorAll('article pre.mermaid').length === 0"
    assert wait_for(browser, drawn), f"chapter 7's diagrams are not drawn after {PATIENCE_S:.0f} s"
    heading = browser.find_element(By.ID, "readiness-and-completion-side-by-side")
    block = heading.find_element(By.XPATH, "following-sibling::*[1]")  # the grid that holds the two
    diagrams = block.find_elements(By.CSS_SELECTOR, "div.mermaid")
    assert len(diagrams) == 2, f"the section opens with {len(diagrams)} diagrams in a block, not two"
    left, right = (diagram.rect for diagram in diagrams)
    column = browser.find_element(By.CSS_SELECTOR, "article.md-content__inner").rect
    assert right["x"] >= left["x"] + left["width"], (left, right)  # beside it, not below it
    assert right["y"] < left["y"] + left["height"], (left, right)
    assert min(left["width"], right["width"]) >= column["width"] / 3, (left, right, column)
