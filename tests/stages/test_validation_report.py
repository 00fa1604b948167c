"""The validation report a refused user opens, in a real browser with the network blocked."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.common.errors import ValidationFailed
from tasks.validate import validate
from tasks.validate.offline_docs import remote_assets
from tests.support.browser import offline_browser, visit

SITE = Path("gx", "uncommitted", "data_docs", "local_site")


@pytest.fixture(scope="module")
def versions(prepared, params, tmp_path_factory):
    """An accepted version (the bundled digits) and a refused one: 4 test rows copied from train (leakage, a check
    outside Great Expectations) and class 7 starved to 10 training rows (class balance, a suite expectation)."""
    accepted = tmp_path_factory.mktemp("accepted")
    validate(params.validate_, prepared, accepted)
    bad = tmp_path_factory.mktemp("bad") / "prepared"
    shutil.copytree(prepared, bad)
    train_x, train_y = np.load(bad / "train" / "x.npy"), np.load(bad / "train" / "y.npy")
    test_x, test_y = np.load(bad / "test" / "x.npy"), np.load(bad / "test" / "y.npy")
    test_x[:4], test_y[:4] = train_x[:4], train_y[:4]
    np.save(bad / "test" / "x.npy", test_x)
    np.save(bad / "test" / "y.npy", test_y)
    keep = np.setdiff1d(np.arange(len(train_y)), np.flatnonzero(train_y == 7)[10:])
    np.save(bad / "train" / "x.npy", train_x[keep])
    np.save(bad / "train" / "y.npy", train_y[keep])
    refused = tmp_path_factory.mktemp("refused")
    with pytest.raises(ValidationFailed) as info:
        validate(params.validate_, bad, refused)
    return {"accepted": accepted, "refused": refused, "error": str(info.value)}


def test_the_error_names_the_report_page_and_the_page_leads_with_what_failed(versions):
    error = versions["error"]
    page = versions["refused"] / SITE / "report.html"
    assert f"report: {page}" in error.splitlines()[0]
    html = page.read_text()
    failed = [line.removeprefix("  - ") for line in error.splitlines()[1:] if line.startswith("  - ")]
    assert len(failed) >= 2 and any("no_leakage_from_train" in f for f in failed) and any("'7'" in f for f in failed)
    text = re.sub(r"<[^>]+>", "", html).replace("&#x27;", "'").replace("&quot;", '"').replace("&gt;", ">")
    lead = text.index("Why this version was refused")
    for line in failed:  # the error's own words, before the table of every check
        assert lead < text.index(line) < text.index("Passed checks"), line


def test_no_page_of_either_site_references_a_remote_asset(versions):
    for version in ("accepted", "refused"):
        site = versions[version] / SITE
        pages = list(site.rglob("*.html"))
        assert len(pages) >= 10  # the report, GX's index, suites and validation results
        for page in pages:
            html = page.read_text()
            assert remote_assets(html) == [], page
            # the same, read bluntly: no script, style sheet or image address that leaves the machine
            assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", html), page
            assert not re.search(r"url\(\s*['\"]?(https?:)?//", html), page
            assert "dataContextId" not in html, page
        for css in (site / "static" / "styles").glob("*.css"):
            assert "https://" not in css.read_text(), css
    assert "analytics_enabled: false" in (versions["accepted"] / "gx" / "great_expectations.yml").read_text()


def test_the_reports_render_offline_in_chromium_from_local_files_only(versions, tmp_path):
    shots = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    failed_lines = [line.removeprefix("  - ") for line in versions["error"].splitlines() if line.startswith("  - ")]
    with offline_browser() as browser:
        for version in ("refused", "accepted"):
            site = versions[version] / SITE
            seen = visit(browser, (site / "report.html").as_uri())
            body = seen.page.inner_text("body")
            seen.page.screenshot(path=str(shots / f"validation-report-{version}.png"), full_page=True)
            assert f"Data validation: {version}" in body
            if version == "refused":
                for line in failed_lines:
                    assert line in body, line
                assert "Passed checks" in body
            _assert_local_only(seen)

            index = visit(browser, (site / "index.html").as_uri())
            index.page.screenshot(path=str(shots / f"data-docs-index-{version}.png"))
            _assert_local_only(index)
            assert index.page.evaluate("typeof jQuery") == "function"
            # bootstrap-table built the list of validations (offline before: an empty table, two buttons)
            assert index.page.locator(".bootstrap-table tbody tr").count() >= 7
            banner = index.page.locator(".alert").first.inner_text()
            assert ("refused" in banner) == (version == "refused") and "validation report" in banner
            # a failed suite page, from the report's link: styled by Bootstrap from the vendored copy
            if version == "refused":
                detail = seen.page.locator("ol.failures a").first.get_attribute("href")
                suite_page = visit(browser, (site / detail).as_uri())
                _assert_local_only(suite_page)
                assert "share_of_largest" in suite_page.page.inner_text("body")
                position = suite_page.page.evaluate(
                    "getComputedStyle(document.querySelector('.navbar')).getPropertyValue('position')")
                assert position == "sticky"  # Bootstrap's .sticky-top applied: its CSS loaded


def _assert_local_only(seen) -> None:
    """Every request the page made was for a local file, and every one succeeded; its scripts and style sheets
    name local files."""
    assert seen.requests and all(url.startswith("file://") for url in seen.requests), seen.requests
    assert not seen.failed, seen.failed
    assets = seen.page.evaluate(
        "[...document.querySelectorAll('script[src], link[rel~=stylesheet]')].map(e => e.src || e.href)")
    assert all(url.startswith("file://") for url in assets), assets
