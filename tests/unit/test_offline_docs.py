"""Data Docs made self-contained: the remote-asset finder and the rewrite, on pages written for the purpose."""

from pathlib import Path

from tasks.validate.offline_docs import make_offline, remote_assets

CDN_PAGE = """<html><head>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-x" crossorigin="anonymous"></script>
<style>.brand { background: url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png') }</style>
</head><body><img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1&dataContextId=abc">
<a href="https://greatexpectations.io">a link, not a load</a></body></html>"""


def test_the_finder_names_every_load_that_leaves_the_machine_and_no_link():
    found = remote_assets(CDN_PAGE)
    assert len(found) == 4 and all(url.startswith("https://") for url in found)
    assert "https://greatexpectations.io" not in found
    assert remote_assets('<script src="//cdn.example/x.js"></script><link rel="icon" href="http://x/f.ico">') == [
        "//cdn.example/x.js", "http://x/f.ico"]
    assert remote_assets('<script src="static/x.js"></script><div style="background:url(a.png)"></div>') == []


def test_a_page_is_pointed_at_the_vendored_copies_relative_to_its_folder(tmp_path: Path):
    site = tmp_path / "site"
    page = site / "validations" / "suite" / "run" / "page.html"
    page.parent.mkdir(parents=True)
    page.write_text(CDN_PAGE)
    unknown = site / "other.html"
    unknown.write_text('<script src="https://cdn.example/new.js"></script>')
    left = make_offline(site)
    html = page.read_text()
    assert remote_assets(html) == []
    assert 'href="../../../static/vendor/bootstrap-4.3.1/css/bootstrap.min.css"' in html
    assert "integrity" not in html and "crossorigin" not in html and "dataContextId" not in html
    assert (page.parent / "../../../static/vendor/bootstrap-4.3.1/css/bootstrap.min.css").resolve().is_file()
    assert 'href="https://greatexpectations.io"' in html  # links stay links
    assert left == ["other.html: https://cdn.example/new.js"]  # an address nobody vendored is reported, not hidden
