"""The validation report a user opens: one self-contained HTML page that leads with what failed, in the words of the
error, then lists every check (the suite's expectations and the contract and leakage checks beside them), each
linked to its Great Expectations page."""

from __future__ import annotations

import datetime
import html
from collections.abc import Sequence
from pathlib import Path

from tasks.common.atomic import write_with

# what a check's column or expectation means, in words a data owner reads (the column names are suites.py's)
_MEANING = {
    "label": "labels",
    "class": "classes present",
    "share_of_largest": "class balance: each class's rows against the largest class's",
    "share_shift": "label drift: each class's share of rows against the last accepted version",
    "rows": "rows per class",
    "image_md5": "duplicate examples",
    "row_md5": "duplicate examples",
    "nan_pixels": "missing pixel values",
    "pixel_min": "pixel range (low end)",
    "pixel_max": "pixel range (high end)",
    "pixel_std": "constant images",
    "image_shape": "image shape",
}
_TEXT = {"__chars": ("empty texts", ""), "__tokens": ("texts longer than the length read (cut)", "length in tokens"),
         "__unknown_share": ("tokens the vocabulary lacks", "share of unknown tokens")}  # suites.py's text statistics
_BANNER = "<!-- validation-report-banner -->"


def _text_meaning(check) -> str:
    suffix = next(s for s in _TEXT if check.column.endswith(s))
    name, (words, drifting) = check.column.removesuffix(suffix), _TEXT[suffix]
    if "mean_to_be_between" in check.expectation and "min_value" in check.limit:
        return f"drift of {name}'s {drifting} against the last accepted version"
    return f"{name}: {words}"


def write(path: Path, checks: Sequence, *, hint: str = "", notes: Sequence[str] = (),
          about: dict | None = None) -> Path:
    """Write the report page at `path` (inside the Data Docs site, so its links to the suite's pages resolve)."""
    failed = [c for c in checks if not c.passed]
    verdict = "refused" if failed else "accepted"
    summary = (f"{len(failed)} of {len(checks)} checks failed: nothing is trained on this version"
               if failed else f"all {len(checks)} checks passed")
    about_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in (about or {}).items())
    body = [
        f'<header class="{verdict}"><h1>Data validation: {verdict}</h1><p>{_e(summary)}</p></header>',
        f"<table class=about>{about_rows}</table>" if about_rows else "",
    ]
    if failed:
        body.append("<h2>Why this version was refused</h2><ol class=failures>")
        body += [f"<li>{_e(error_line(c))}{_link(c.page, 'details')}</li>" for c in failed]
        body.append("</ol>")
        if hint:
            body.append(f"<p class=hint>{_e(hint)}</p>")
    if notes:
        body.append("<h2>Noted, not refused</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    passed = [c for c in checks if c.passed]
    if failed:
        body.append(f"<h2>Failed checks ({len(failed)})</h2>" + _table(failed))
    body.append(f"<details{' open' if not failed else ''}><summary><h2>Passed checks ({len(passed)})</h2></summary>"
                f"{_table(passed)}</details>")
    body.append('<p class=more><a href="index.html">Every validation of this project (Great Expectations Data Docs)'
                "</a> &middot; <a href=\"../../../../report.json\">the same checks as JSON</a> (report.json, "
                "beside the gx folder)</p>")
    page = _PAGE.format(title=f"Data validation: {verdict}", style=_STYLE, body="\n".join(body))
    write_with(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def _table(checks: Sequence) -> str:
    rows = []
    for c in checks:
        status = "passed" if c.passed else "failed"
        rows.append(f'<tr class={status}><td>{status}</td><td>{_e(c.split)}</td><td>{_e(c.expectation)}'
                    f'{"(" + _e(c.column) + ")" if c.column else ""}</td><td>{_e(meaning(c))}</td>'
                    f"<td>{_e(_short(c.observed))}</td><td>{_e(c.limit)}</td><td>{_link(c.page, 'page')}</td></tr>")
    return ("<table class=checks><thead><tr><th>status</th><th>split</th><th>check</th><th>what it checks</th>"
            "<th>observed</th><th>limit</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def link_from_index(index: Path, checks: Sequence) -> None:
    """Put a banner atop Great Expectations' index page that leads to the report (the page users open by habit)."""
    if not index.is_file():
        return
    failed = sum(not c.passed for c in checks)
    text = index.read_text(encoding="utf-8")
    text = text.split(_BANNER)[0] + text.split(_BANNER)[-1] if text.count(_BANNER) == 2 else text
    words = f"This data version was refused: {failed} check(s) failed." if failed else "This data version passed."
    banner = (f'{_BANNER}<div class="alert {"alert-danger" if failed else "alert-success"} m-0 rounded-0">{words} '
              f'<a href="report.html"><b>Open the validation report</b></a>, which lists every check, the data '
              f"contract and leakage included.</div>{_BANNER}")
    text = text.replace("<body>", f"<body>\n{banner}", 1)
    write_with(index, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def error_line(check) -> str:
    """One failed check as the error message words it."""
    if check.split == "contract":
        return f"data contract, {check.column}: {check.observed}"
    return f"{check.split}: {check.expectation}({check.column or ''}) observed {check.observed}; limit: {check.limit}"


def meaning(check) -> str:
    if check.expectation == "data_contract":
        return "the data contract frozen with the dataset's first accepted version"
    if check.expectation == "no_leakage_from_train":
        return "leakage: held-out examples identical to training examples"
    if (check.column or "").endswith(tuple(_TEXT)):
        return _text_meaning(check)
    if "mean_to_be_between" in check.expectation:
        return f"drift of {check.column}'s mean against the last accepted version"
    if "row_count" in check.expectation:
        return "rows in the split"
    if "columns_to_match" in check.expectation:
        return "the columns and their order"
    if "of_type" in check.expectation or "type_list" in check.expectation:
        return f"{check.column}'s type"
    if "not_be_null" in check.expectation:
        return f"missing values in {check.column}"
    if check.column in _MEANING:
        return _MEANING[check.column]
    if "values_to_be_between" in check.expectation:
        return f"{check.column}'s values within the last accepted version's range"
    if "values_to_be_in_set" in check.expectation:
        return f"{check.column}'s values among those already seen"
    return check.column or ""


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _link(page: str, words: str) -> str:
    return f' <a href="{_e(page)}">{words}</a>' if page else ""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body>
{body}
</body></html>
"""

# no external font, script or image: the page reads the same offline, from MLflow, or attached to a ticket
_STYLE = """
:root { color-scheme: light dark; --fg: #1b1f23; --bg: #fff; --muted: #57606a; --line: #d0d7de;
        --bad: #b42318; --bad-bg: #fde8e7; --good: #1a7f37; --good-bg: #e6f4ea; --link: #0b57d0; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --bg: #0d1117; --muted: #8b949e; --line: #30363d; --bad: #ff7b72; --bad-bg: #3b1113;
          --good: #56d364; --good-bg: #0f2e19; --link: #79c0ff; } }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; padding: 1.5rem 2rem; max-width: 80rem; }
a { color: var(--link); }
header { padding: .8rem 1.2rem; border-radius: 6px; margin-bottom: 1rem; }
header h1 { margin: 0; font-size: 1.6rem; } header p { margin: .3rem 0 0; }
header.refused { background: var(--bad-bg); color: var(--bad); }
header.accepted { background: var(--good-bg); color: var(--good); }
h2 { font-size: 1.2rem; margin-top: 1.6rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
ol.failures li { margin: .35rem 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13.5px;
                 color: var(--bad); }
p.hint { color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
table.about { width: auto; } table.about th { text-align: left; padding-right: 1rem; color: var(--muted); }
table.checks th, table.checks td { border-bottom: 1px solid var(--line); padding: .3rem .5rem; text-align: left;
                                   vertical-align: top; }
table.checks td:nth-child(5), table.checks td:nth-child(6) { font-family: ui-monospace, Menlo, monospace;
                                                             word-break: break-word; }
tr.failed td:first-child { color: var(--bad); font-weight: 600; }
tr.passed td:first-child { color: var(--good); }
summary { cursor: pointer; } summary h2 { display: inline-block; border: 0; }
p.more { margin-top: 1.5rem; color: var(--muted); }
"""
