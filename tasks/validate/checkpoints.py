"""Great Expectations checkpoints as the stage's checks: each expectation's outcome in words, with its page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    """One check of a data version: an expectation of the suite, or the contract or leakage check beside them."""
    split: str
    expectation: str
    column: str | None
    observed: str
    limit: str = ""  # what the check demands, e.g. "min_value=20"
    passed: bool = False
    page: str = ""  # the Great Expectations page that shows it, relative to the Data Docs site



def run(gx, context, source, asset_name, frame, expectations, split_name) -> tuple[list[Check], list]:
    """Validate `frame` against `expectations` as a checkpoint: one Check per expectation, and the identifiers of
    what to render in the Data Docs (`build_docs`, once for every checkpoint of a version)."""
    if asset_name in source.get_asset_names():
        asset = source.get_asset(asset_name)
        batch = asset.batch_definitions[0]
    else:
        asset = source.add_dataframe_asset(asset_name)
        batch = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=asset_name, expectations=expectations))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=asset_name, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=asset_name,
            validation_definitions=[definition],
            actions=[],  # not UpdateDataDocsAction: it rebuilt the site's index and assets at each checkpoint
            # per-class tables name the classes behind each unexpected value
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["class"]}
            if "class" in frame.columns else {"result_format": "SUMMARY"},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    checks, rendered = [], []
    for identifier, run in outcome.run_results.items():
        rendered += [identifier, identifier.expectation_suite_identifier]
        page = _page_of(context, identifier)
        for res in run.results:
            cfg = res.expectation_config
            checks.append(Check(split=split_name, expectation=cfg.type, column=cfg.kwargs.get("column"),
                                observed=(not res.success and _missing(frame, cfg)) or _observed(res.result),
                                limit=_limit(cfg.kwargs), passed=bool(res.success), page=page))
    return checks, rendered


def build_docs(context, rendered: list) -> None:
    """The Data Docs pages of these validation results and suites, and the site's index, built once (what each
    checkpoint's UpdateDataDocsAction did for its own: the index and static assets again every time)."""
    context.build_data_docs(site_names=["local_site"], resource_identifiers=rendered)


def _page_of(context, identifier) -> str:
    """The Data Docs page of one validation result, relative to the site's root (where the report lives)."""
    from urllib.parse import unquote, urlparse

    for site in context.get_docs_sites_urls(resource_identifier=identifier, only_if_exists=False):
        path = Path(unquote(urlparse(site["site_url"]).path))
        parts = path.parts
        if "local_site" in parts:
            return Path(*parts[parts.index("local_site") + 1:]).as_posix()
    return ""


def _limit(kwargs: dict) -> str:
    """An expectation's demand in words: its bounds or set, as configured."""
    shown = {k: v for k, v in kwargs.items() if k not in ("column", "batch_id", "result_format", "catch_exceptions")
             and v is not None}
    parts = []
    for key, value in shown.items():
        if isinstance(value, (list, tuple)) and len(value) > 12:
            value = f"[{', '.join(map(str, value[:12]))}, … ({len(value)} in all)]"
        elif isinstance(value, float):
            value = f"{value:.6g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _missing(frame, cfg) -> str:
    """For a set a column's distinct values must contain: which members are missing (GX reports no observed value
    for it with the per-class result format)."""
    column, wanted = cfg.kwargs.get("column"), cfg.kwargs.get("value_set")
    if "distinct_values_to" not in cfg.type or column not in frame.columns or not isinstance(wanted, (list, tuple)):
        return ""
    present = set(frame[column].tolist())
    missing = [v for v in wanted if v not in present]
    return f"missing {missing}" if missing else ""


def _observed(result: dict) -> str:
    if "observed_value" in result:
        return "as expected" if result["observed_value"] is None else str(result["observed_value"])
    if result.get("unexpected_count") == 0:
        return "no unexpected value"
    if result.get("unexpected_index_list") and isinstance(result["unexpected_index_list"][0], dict):
        named = [f"class {row.get('class')!r}: {value}" for row, value in
                 zip(result["unexpected_index_list"], result.get("unexpected_list", []))][:10]
        return f"{result.get('unexpected_count')} unexpected value(s): {', '.join(named)}"
    if "partial_unexpected_list" in result:
        sample = result["partial_unexpected_list"][:5]
        return f"{result.get('unexpected_count')} unexpected value(s), e.g. {sample}"
    return str(result) if result else "as expected"
