"""Great Expectations' Data Docs made self-contained: every CDN script and style sheet, and the remote logo, served
from the site's own `static/` folder, so a page opened with the network off renders whole and requests nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from tasks.common.atomic import write_with

VENDOR = Path(__file__).parent / "vendor"  # pinned npm files and their licences (vendor/README.md)
_URL = re.compile(r"""https?://[^\s"'()<>]+""")
# subresource integrity and CORS mode are for CDN fetches: a file:// page cannot fetch in CORS mode at all
_CDN_ATTRIBUTES = re.compile(r'\s+(?:integrity|crossorigin)="[^"]*"')
_CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""")
_REMOTE = ("http://", "https://", "//")


def make_offline(site: Path, since: float = 0.0) -> list[str]:
    """Copy the vendored files into `site` and point its pages (those written since `since`, plus every style sheet)
    at them; returns each remote asset a page still names ("page: url"), which a GX upgrade could add."""
    manifest = json.loads((VENDOR / "assets.json").read_text())
    targets = {url: f"static/vendor/{path}" for url, path in manifest["urls"].items()}
    targets |= {url: f"static/images/{name}" for url, name in manifest["site_images"].items()}
    for package in manifest["packages"]:
        shutil.copytree(VENDOR / package["folder"], site / "static" / "vendor" / package["folder"], dirs_exist_ok=True)
    left = []
    for path in _files(site, since):
        text = path.read_text(encoding="utf-8")
        offline = _rewrite(text, targets, Path(os.path.relpath(site, path.parent)))
        if offline != text:
            write_with(path, lambda tmp, t=offline: tmp.write_text(t, encoding="utf-8"))
        assets = remote_assets(offline) if path.suffix == ".html" else _css_urls(offline)
        left += [f"{path.relative_to(site)}: {url}" for url in assets if url.startswith(_REMOTE)]
    return left


def remote_assets(html: str) -> list[str]:
    """Every address a page loads on opening (scripts, style sheets, images, fonts, frames, CSS urls) that leaves
    the machine; links a reader may click are not loads."""
    finder = _AssetFinder()
    finder.feed(html)
    return [url for url in finder.assets if url.startswith(_REMOTE)]


def _files(site: Path, since: float) -> list[Path]:
    pages = [p for p in site.rglob("*.html") if p.stat().st_mtime >= since or p.name == "index.html"]
    return pages + sorted((site / "static" / "styles").glob("*.css"))


def _rewrite(text: str, targets: dict[str, str], to_root: Path) -> str:
    def local(match: re.Match) -> str:
        url = match.group(0)
        target = targets.get(url.split("?", 1)[0])  # the logo's query string carried the data-context id
        return (to_root / target).as_posix() if target else url

    return _CDN_ATTRIBUTES.sub("", _URL.sub(local, text))


def _css_urls(css: str) -> list[str]:
    return [m.group(1) for m in _CSS_URL.finditer(css)]


class _AssetFinder(HTMLParser):
    _LOADS = {"script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
              "embed": ("src",), "object": ("data",), "video": ("src", "poster"), "audio": ("src",),
              "input": ("src",), "track": ("src",)}
    _LOADED_LINKS = {"stylesheet", "icon", "shortcut", "preload", "modulepreload", "prefetch", "manifest",
                     "apple-touch-icon", "dns-prefetch", "preconnect"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.assets: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        for name in self._LOADS.get(tag, ()):
            if attrs.get(name):
                self.assets += [part.split()[0] for part in attrs[name].split(",") if part.strip()] \
                    if name == "srcset" else [attrs[name].strip()]
        if tag == "link" and self._LOADED_LINKS & set(attrs.get("rel", "").lower().split()) and attrs.get("href"):
            self.assets.append(attrs["href"].strip())
        if attrs.get("style"):
            self.assets += _css_urls(attrs["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.assets += _css_urls(data)
