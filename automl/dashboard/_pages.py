"""Page layouts: functions of the results folder (and a run name) that return Dash components."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from urllib.parse import quote, urlencode

import pandas as pd
from dash import dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme, Trim

from automl.dashboard import _figures as figures
from automl.dashboard._importance import param_importances
from automl.dashboard._runs import Models, Run, cached, load_evaluations, load_models, load_run, model_card, run_names
from automl.layout import (
    BEST_PREFIX, COST_COLUMNS, FAMILY_COLUMN, IMAGE_SIZE, LAST_PREFIX, PARAMETERS, SAMPLES_SEEN, SECONDS_PER_EPOCH,
    WALL_TIME, best_column, hyperparameter_columns, hyperparameter_name,
)
from automl.objective import HEADLINE, METRICS, Objective
from automl.published import PUBLISHED
from automl.store import STATUSES, missing

BINARY_METRICS = ("sensitivity", "specificity")
NO_WALL_TIME = "wall-time data not recorded<br>(epochs.parquet without timestamps, written before they were added)"
NUMBER = Format(precision=4, scheme=Scheme.decimal_or_exponent).trim(Trim.yes)
COUNT = Format(precision=3, scheme=Scheme.decimal_si_prefix).trim(Trim.yes)  # 1.2M, 85.3k
SECONDS = Format(precision=1, scheme=Scheme.fixed)
#: The leaderboard's "compute" columns: headers and formats (the values stay numbers, sorted and filtered as such).
COMPUTE = {IMAGE_SIZE: ("image size", None), PARAMETERS: ("parameters", COUNT),
           SECONDS_PER_EPOCH: ("s/epoch", SECONDS), WALL_TIME: ("trial seconds", SECONDS),
           SAMPLES_SEEN: ("samples seen", COUNT)}
#: Rows of the leaderboard sent at once; and columns of trials.parquet it leaves out (besides the last_* ones).
LEADERBOARD_PAGE = 50
LEADERBOARD_HIDDEN = frozenset({"node_ip", "node_id"})


def note(text: str, kind: str = "info") -> html.Div:
    """A message box: ``info``, ``warn`` or ``error``."""
    return html.Div(text, className=f"note {kind}")


def _size(info: dict) -> str:
    return "x".join(map(str, info.get("image_size") or [])) or "-"


def _fmt(value, digits: int = 3) -> str:
    if missing(value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def _when(value: dt.datetime | None, zone: bool = True) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M" + " UTC" * zone) if value else "-"


def _table(header: list[str], rows: list[list], table_id: str, row_classes: list[str] | None = None) -> html.Div:
    classes = row_classes or [""] * len(rows)
    body = [html.Tr([html.Td(cell) for cell in row], className=cls) for row, cls in zip(rows, classes, strict=True)]
    table = html.Table([html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(body)], id=table_id)
    return html.Div(table, className="table-wrap")


def _facts(facts: list[tuple[str, str]]) -> html.Dl:
    return html.Dl([part for key, value in facts for part in (html.Dt(key), html.Dd(value))], className="facts")


def _status(status: str) -> html.Span:
    return html.Span(status, className=f"badge {status}")


def _graph(figure, graph_id: str) -> dcc.Graph:
    return dcc.Graph(id=graph_id, figure=figure, config={"displaylogo": False}, className="card")


def _run_href(name: str, models: bool = False) -> str:
    return f"/runs/{quote(name)}" + ("/models" if models else "")


def experiments_page(results_dir: Path) -> list:
    """Every run under the results folder: status, search settings, trial counts, best metric, start and duration."""
    names = run_names(results_dir)
    if not Path(results_dir).is_dir():
        return [html.H2("Experiments"), note(f"The results folder {results_dir} does not exist.", "error")]
    if not names:
        return [html.H2("Experiments"), note(f"No runs in {results_dir} yet. Start one with: automl search SPEC.yaml "
                                             f"--data DIR --name NAME --results {results_dir}. This page refreshes "
                                             "on its own.")]
    header = ["run", "status", "search", "completed", "pruned", "errored", "running", "planned", "val metric", "best",
              "started (UTC)", "duration", "models", "notes"]
    rows = []
    for name in names:
        run = load_run(results_dir, name, epochs=False)
        counts, info = run.counts(), run.info
        rows.append([
            dcc.Link(name, href=_run_href(name)), _status(run.status),
            f"{info.get('engine', '-')}: {info.get('searcher', '-')}, {info.get('scheduler', '-')}",
            *[counts.get(s, 0) for s in ("completed", "pruned", "errored", "running")], info.get("num_samples", "-"),
            run.metric.removeprefix("val_"), _fmt(run.best()), _when(run.started(), zone=False),
            _duration(run.duration_s()),
            dcc.Link("models", href=_run_href(name, models=True)) if run.has_models() else "-",
            "; ".join(run.messages),
        ])
    return [html.H2("Experiments"), html.P(f"{len(names)} runs in {results_dir}", className="muted"),
            _table(header, rows, "experiments")]


def experiment_page(results_dir: Path, name: str) -> list:
    """One run: best so far vs wall time and trials, learning curves, parallel coordinates, importance, leaderboard."""
    run = load_run(results_dir, name)
    if run is None:
        return [note(f"No run named {name!r} in {results_dir}.", "error"), dcc.Link("all experiments", href="/")]
    content = [_run_header(run), *[note(m, "warn") for m in run.messages]]
    if run.trials.empty:
        return [*content, note("No trial has reported yet. This page refreshes on its own while the search runs.")]
    metric, objective = run.metric, run.objective
    by_time = figures.best_by_time(run.epochs, objective)
    time_figure = (figures.best_so_far({name: by_time}, "seconds", "wall time", "seconds since the first epoch", metric)
                   if by_time is not None else figures.note_figure("best so far vs wall time", NO_WALL_TIME))
    order_note = "" if "started_at" in run.trials else "no start times recorded: trials in the order of trials.parquet"
    trial_figure = figures.best_so_far({name: figures.best_by_trial(run.trials, objective)}, "trial", "trials",
                                       "trials in start order", metric, note=order_note)
    importances, importance_notes = cached(f"importance:{run.path}", _importance_stamp(run),
                                           lambda: param_importances(run.trials, objective, run.log_scaled))
    importance = (_graph(figures.importance_bars(importances), "importance") if importances
                  else note("Hyperparameter importance: " + importance_notes[0]))
    curves, curves_note = figures.sample_trials(run.trials, objective, figures.MAX_CURVES)
    lines, lines_note = figures.sample_trials(run.trials, objective, figures.MAX_LINES)
    return [
        *content,
        html.Div([_graph(time_figure, "best-vs-time"), _graph(trial_figure, "best-vs-trials")], className="grid2"),
        _graph(figures.learning_curves(curves, run.epochs, metric, run.info.get("scheduler"), curves_note),
               "learning-curves"),
        _graph(figures.parallel_coordinates(lines, metric, list(importances), run.log_scaled, lines_note),
               "parallel-coordinates"),
        html.Div([html.Div([importance, html.Ul([html.Li(n) for n in importance_notes[not importances:]],
                                                className="muted")], className="card"), _best_trial(run)],
                 className="grid2"),
        html.H3(f"Leaderboard ({len(run.trials):,} trials)"),
        html.P(f"Click a header to sort; type in the row under the headers to filter (e.g. > 0.5, or adam). "
               f"{LEADERBOARD_PAGE} rows a page: sorting, filtering and paging happen on the server.",
               className="muted"),
        _family_filter(run),
        _leaderboard(run),
    ]


def _importance_stamp(run: Run) -> tuple:
    """When importances are computed again: on every change of a small run; in a large one (which a running search
    changes every few seconds, and which takes a second to assess) when its trials grew by 5%."""
    if len(run.trials) <= 1000:
        return run.version, run.objective
    return round(math.log(len(run.trials)) / math.log(1.05)), run.objective, run.path


def _run_header(run: Run) -> html.Div:
    info, counts = run.info, run.counts()
    search = f"{info.get('engine', '-')}: {info.get('searcher', '-')} searcher, {info.get('scheduler', '-')} scheduler"
    facts = [
        ("search", search),
        ("objective", str(run.objective)),
        ("trials", ", ".join(f"{counts.get(s, 0)} {s}" for s in ("completed", "pruned", "errored", "running"))
         + f" of {info.get('num_samples', '?')} planned, up to {info.get('max_epochs', '?')} epochs each"),
        ("best", _fmt(run.best(), 4)),
        ("started", f"{_when(run.started())}, {_duration(run.duration_s())}"),
        ("data", f"{info.get('task', '-')}, {_size(info)} px, split: {info.get('split', '-')}, "
                 + f"fingerprint {info.get('data_fingerprint', '-')}"),
    ]
    rejected = info.get("infeasible_draws") or {}
    if rejected.get("rejected"):
        reasons = ", ".join(f"{why} {n}" for why, n in (rejected.get("by_reason") or {}).items())
        facts.append(("infeasible draws", f"{rejected['rejected']} rejected without a trial ({reasons})"))
    if info.get("epoch_budget"):
        spent = info["epochs_spent"] if run.status != "running" and "epochs_spent" in info else len(run.epochs)
        facts.append(("epoch budget", f"{spent} of {info['epoch_budget']} epochs trained"))
    if info.get("command"):
        facts.append(("command", info["command"]))
    links = [dcc.Link("models and ensemble", href=_run_href(run.name, models=True))] if run.has_models() else []
    links.append(dcc.Link("compare with other runs", href="/compare?" + urlencode({"run": run.name})))
    return html.Div([html.H2([run.name, " ", _status(run.status)]), _facts(facts), html.Div(links, className="links")])


def _best_trial(run: Run) -> html.Div:
    best = _best_row(run)
    if not best:
        return note("No trial has a value of the metric yet.")
    scores = [(m, _fmt(best.get(best_column(m)), 4)) for m in METRICS if best_column(m) in best]
    params = [(hyperparameter_name(c), f"{best[c]:.4g}" if isinstance(best[c], float) else str(best[c]))
              for c in hyperparameter_columns(run.trials) if not missing(best[c])]
    status = f"{best.get('status')}, {best.get('epochs')} epochs, best at epoch {_fmt(best.get('best_epoch'), 0)}"
    cost = []  # as far as recorded (runs recorded before have none of it)
    if not missing(best.get(PARAMETERS)):
        cost.append(f"{best[PARAMETERS]:,.0f} parameters")
    if not missing(best.get(SECONDS_PER_EPOCH)):
        cost.append(f"{best[SECONDS_PER_EPOCH]:.1f} s/epoch")
    if not missing(best.get(WALL_TIME)):
        cost.append(f"{best[WALL_TIME]:.0f} s in all")
    facts = [("status", status), *([("compute", ", ".join(cost))] if cost else []), *scores, *params]
    return html.Div([html.H3(f"Best trial: {best['trial_id']}"), _facts(facts)], className="card")


def _family_filter(run: Run) -> html.Div:
    """A dropdown of the run's model families that narrows the leaderboard to one; present on every run's page (the
    leaderboard's callback listens to it) but shown only when the run's trials have a family."""
    families = sorted(map(str, run.trials[FAMILY_COLUMN].dropna().unique())) if FAMILY_COLUMN in run.trials else []
    dropdown = dcc.Dropdown(id="leaderboard-family", options=families, value=None, placeholder="every family",
                            clearable=True, searchable=False, persistence=run.name, persistence_type="session")
    return html.Div([html.Span("model family", className="muted"), dropdown], id="family-filter",
                    style=None if families else {"display": "none"})


def _leaderboard(run: Run) -> dash_table.DataTable:
    """Every trial and every column of trials.parquet, best first; :func:`leaderboard_rows` sends a page at a time."""
    frame, columns = _ranked(run)
    return dash_table.DataTable(
        id="leaderboard", data=_records(frame.head(LEADERBOARD_PAGE)), columns=columns, page_action="custom",
        page_current=0, page_size=LEADERBOARD_PAGE, page_count=_page_count(frame), sort_action="custom", sort_by=[],
        filter_action="custom", filter_query="", merge_duplicate_headers=True,
        filter_options={"placeholder_text": "filter"},
        persistence=run.name, persistence_type="session", persisted_props=["sort_by", "filter_query", "page_current"],
        style_table={"overflowX": "auto"},
        style_cell={"fontSize": 12, "padding": "3px 6px", "maxWidth": 260, "overflow": "hidden",
                    "textOverflow": "ellipsis"},
        style_header={"fontWeight": "600", "backgroundColor": "#f3f5f7", "textAlign": "center"},
        style_data_conditional=[{"if": {"filter_query": f'{{status}} = "{s}"'}, "color": c}
                                for s, c in (("pruned", "#5b6470"), ("errored", "#c45500"), ("running", "#1a7f37"))],
    )


def leaderboard_rows(results_dir: Path, name: str, page: int, sort_by: list[dict], filter_query: str,
                     family: str | None = None, page_size: int = LEADERBOARD_PAGE) -> tuple[list[dict], int, int]:
    """One page of the leaderboard, of one model ``family`` (or all), filtered and sorted as the table asks (Dash's
    ``filter_query`` and ``sort_by``), the number of pages, and the page shown (``page``, or the last one when
    fewer rows are left). Ranks stay those among all the run's trials."""
    run = load_run(results_dir, name, epochs=False)
    if run is None or run.trials.empty:
        return [], 1, 0
    frame, _ = _ranked(run)
    if family and FAMILY_COLUMN in frame:
        frame = frame[frame[FAMILY_COLUMN] == family]
    frame = _filtered(frame, filter_query or "")
    sort_by = [s for s in sort_by or [] if s.get("column_id") in frame]
    if sort_by:
        frame = frame.sort_values([s["column_id"] for s in sort_by], na_position="last", kind="stable",
                                  ascending=[s["direction"] == "asc" for s in sort_by])
    pages = _page_count(frame, page_size)
    page = min(max(int(page or 0), 0), pages - 1)
    return _records(frame.iloc[page * page_size:(page + 1) * page_size]), pages, page


def _ranked(run: Run) -> tuple[pd.DataFrame, list[dict]]:
    """The trials best first with a ``rank``, in the leaderboard's columns, and the table's column definitions:
    groups of every ``best_*`` column, what the trial cost, every ``hp_*`` column and any other column
    trials.parquet has (so that new ones appear by themselves), then where and when it ran."""
    def compute():
        trials, score = run.trials, run.score_column
        if score in trials:
            trials = run.objective.sort(trials, score)
        ranked = trials.assign(rank=range(1, len(trials) + 1)).reset_index(drop=True)
        scores = [score, *[best_column(m) for m in METRICS], *sorted(c for c in ranked if c.startswith(BEST_PREFIX))]
        groups = {"trial": ["rank", "trial_id", "status", "epochs", "best_epoch"],
                  "best on validation": list(dict.fromkeys(scores)), "compute": list(COST_COLUMNS),
                  "hyperparameters": hyperparameter_columns(ranked), "where": ["started_at", "hostname", "error"]}
        placed = {c for names in groups.values() for c in names}
        groups = {**dict(list(groups.items())[:4]),
                  "more": [c for c in ranked if c not in placed and not c.startswith(LAST_PREFIX)
                           and c not in LEADERBOARD_HIDDEN], "where": groups["where"]}
        columns, shown = [], []
        for group, names in groups.items():
            for column in (c for c in names if c in ranked and c not in shown):
                numeric = _numeric(ranked[column]) and column != "started_at"
                label, number = COMPUTE.get(column, (hyperparameter_name(column).removeprefix(best_column("val_")),
                                                     NUMBER))
                columns.append({"id": column, "name": [group, label], "type": "numeric" if numeric else "text",
                                **({"format": number} if numeric else {})})
                shown.append(column)
        return ranked[shown], columns

    return cached(f"leaderboard:{run.path}", (run.version, run.objective), compute)


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as the table shows them: start times as clock times, booleans as text, missing values as '-'."""
    table = frame.copy()
    if "started_at" in table:
        table["started_at"] = pd.to_datetime(table["started_at"], unit="s", utc=True).dt.strftime("%H:%M:%S")
    for column in table:
        if pd.api.types.is_bool_dtype(table[column]) or not _numeric(table[column]):
            table[column] = table[column].map(lambda v: "-" if missing(v) else str(v) if isinstance(v, bool) else v)
    return json.loads(table.to_json(orient="records"))  # NaN as null; much faster than DataFrame.where


def _numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _page_count(frame: pd.DataFrame, page_size: int = LEADERBOARD_PAGE) -> int:
    return max(1, math.ceil(len(frame) / page_size))


# Dash's filter syntax, as its table writes it: `{column} >= 0.5`, `{column} contains adam`, `{a} > 1 && {b} = x`.
_OPERATORS = {">=": "ge", "<=": "le", "!=": "ne", "<": "lt", ">": "gt", "=": "eq", "ge ": "ge", "le ": "le",
              "lt ": "lt", "gt ": "gt", "ne ": "ne", "eq ": "eq", "contains ": "contains",
              "datestartswith ": "datestartswith"}
_COMPARE = {"ge": "__ge__", "le": "__le__", "lt": "__lt__", "gt": "__gt__", "ne": "__ne__", "eq": "__eq__"}


def _filtered(frame: pd.DataFrame, query: str) -> pd.DataFrame:
    """The rows matching every clause of a table filter; a clause naming no column of the table is ignored."""
    for clause in filter(None, (c.strip() for c in query.split(" && "))):
        column, operator, value = _clause(clause)
        if column not in frame:
            continue
        values = frame[column]
        if operator in _COMPARE and isinstance(value, float) and _numeric(values):
            mask = getattr(values, _COMPARE[operator])(value)
        elif operator in _COMPARE:
            text = values.astype(str).str.lower()
            mask = getattr(text, _COMPARE[operator])(str(value).lower())
        elif operator == "contains":
            mask = values.astype(str).str.contains(str(value), case=False, regex=False)
        else:
            mask = values.astype(str).str.startswith(str(value))
        frame = frame[mask.fillna(False).astype(bool)]
    return frame


def _clause(clause: str) -> tuple[str | None, str | None, object]:
    """``{column} OPERATOR value`` as (column, operator name, value: a float when it reads as one)."""
    start, end = clause.find("{"), clause.find("}")
    if start < 0 or end < start:
        return None, None, None
    column, rest = clause[start + 1:end], clause[end + 1:].lstrip()
    for spelling, operator in _OPERATORS.items():
        if rest.startswith(spelling):
            value = rest[len(spelling):].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"`":
                return column, operator, value[1:-1].replace("\\" + value[0], value[0])
            try:
                return column, operator, float(value)
            except ValueError:
                return column, operator, value
    return None, None, None


def models_page(results_dir: Path, name: str) -> list:
    """Members and ensemble beside the published numbers, per-class scores, confusion matrix, ROC, downloads."""
    run = load_run(results_dir, name)
    if run is None:
        return [note(f"No run named {name!r} in {results_dir}.", "error"), dcc.Link("all experiments", href="/")]
    title = [html.H2([dcc.Link(name, href=_run_href(name)), ": models"])]
    if not run.has_models():
        return [*title, note(f"No retrained members yet: automl retrain {name} and automl ensemble {name} (or "
                             "automl run) write them. This page refreshes on its own.")]
    models = load_models(run)
    content = [*title, *[note(m, "warn") for m in models.messages]]
    rows = _model_rows(models, run.objective)
    if not rows:
        return [*content, note("No member has test metrics yet.")]
    task = run.info.get("task") or (models.ensemble or {}).get("task") or "multiclass"
    metrics = HEADLINE + (BINARY_METRICS if task == "binary" else ())
    if ensemble := models.ensemble or {}:
        content.append(html.P(
            f"{ensemble.get('method', '?')} ensemble, chosen on validation only; greedy picks: "
            f"{', '.join(ensemble.get('greedy_picks') or []) or '-'}; best member on validation: "
            f"{ensemble.get('best_member', '-')}. Test numbers with 95% bootstrap intervals where computed.",
            className="muted"))
    return [*content, _comparison_table(run, rows, metrics, task),
            _graph(figures.metric_bars(rows, metrics, "test split: ensemble and members"), "model-bars"),
            _per_class(models, rows), _roc(run, task), _downloads(run, models), _evaluations(run, models)]


def _model_rows(models: Models, objective: Objective) -> list[dict]:
    """One row per model, ensemble first: test metrics, the validation objective, source trial, weight."""
    weights = (models.ensemble or {}).get("weights") or {}
    members = {}
    if models.members is not None and "member_id" in models.members:
        members = models.members.set_index("member_id").to_dict("index")
    # Before automl ensemble has run, members.parquet alone has each member's val_* and test_* numbers.
    results = models.metrics or {
        m: {split: {k.removeprefix(f"{split}_"): v for k, v in row.items() if k.startswith(f"{split}_")}
            for split in ("val", "test")}
        for m, row in members.items()}
    sizes = {m: row.get(PARAMETERS) for m, row in members.items()}  # retrained before they were counted: absent
    chosen = [m for m, w in weights.items() if w > 0]
    if chosen and not any(missing(sizes.get(m)) for m in chosen):
        sizes["ensemble"] = sum(sizes[m] for m in chosen)
    rows = []
    for model, result in sorted(results.items(), key=lambda item: item[0] != "ensemble"):
        member, test = members.get(model, {}), result.get("test") or {}
        rows.append({"model": model, "trial": member.get("trial_id", "-"), "seed": member.get("seed", "-"),
                     "epochs": member.get("epochs", "-"), "parameters": sizes.get(model), "weight": weights.get(model),
                     "val": (result.get("val") or {}).get(objective.key), "ci": result.get("test_ci95") or {},
                     "per_class": test.get("per_class"), "confusion_matrix": test.get("confusion_matrix"),
                     **{m: test.get(m) for m in HEADLINE + BINARY_METRICS}})
    return rows


def _comparison_table(run: Run, rows: list[dict], metrics: tuple[str, ...], task: str) -> html.Div:
    """Ours and the published numbers for the same task in one table, each with its split protocol."""
    def value(row, metric):
        text, low_high = _fmt(row.get(metric)), row["ci"].get(metric)
        if not low_high or None in low_high:
            return text
        return [text, html.Br(), html.Small(f"[{low_high[0]:.3f},\u00a0{low_high[1]:.3f}]")]

    split, size = run.info.get("split", "-"), _size(run.info)
    header = ["model", "source trial", "seed", "epochs", "parameters", "weight",
              f"val {run.objective.key.replace('_', ' ')}", *[f"test {m.replace('_', ' ')}" for m in metrics],
              "resolution", "split"]
    table = [[r["model"], r["trial"], r["seed"], r["epochs"], "-" if missing(r["parameters"]) else
              f"{r['parameters']:,.0f}", _fmt(r["weight"], 2), _fmt(r["val"]), *[value(r, m) for m in metrics], size,
              split] for r in rows]
    published = [p for p in PUBLISHED if p["task"] == task]
    table += [[p["source"], "-", "-", "-", "-", "-", "-", *[_fmt(p.get(m)) for m in metrics], p["resolution"],
               p["split"]] for p in published]
    classes = ["ensemble" if r["model"] == "ensemble" else "" for r in rows] + ["published"] * len(published)
    return html.Div([html.H3("Ensemble, members and published numbers (published: grey; none used a lesion-grouped "
                             "split)"), _table(header, table, "models", classes)])


def _per_class(models: Models, rows: list[dict]) -> html.Div:
    """Per-class precision/recall/F1 of the ensemble and the best member, and the ensemble's confusion matrix."""
    best = (models.ensemble or {}).get("best_member")
    scored = [r for r in rows if r["per_class"]]
    shown = [r for r in scored if r["model"] in ("ensemble", best)] or scored[:1]
    if not shown:
        return note("No per-class scores in the metrics.")
    first, classes = shown[0], list(shown[0]["per_class"])
    header = ["class", "support", *[f"{r['model']} {m}" for r in shown for m in ("precision", "recall", "F1")]]
    table = [[c, first["per_class"][c].get("support", "-"),
              *[_fmt(r["per_class"].get(c, {}).get(m)) for r in shown for m in ("precision", "recall", "f1")]]
             for c in classes]
    parts = [html.Div([html.H3("Per class, test split"), _table(header, table, "per-class")])]
    if first["confusion_matrix"]:
        title = f"confusion matrix, {first['model']} on test"
        parts.append(_graph(figures.confusion_matrix(first["confusion_matrix"], classes, title), "confusion-matrix"))
    return html.Div(parts, className="grid2")


def _roc(run: Run, task: str) -> html.Div:
    if task != "binary":
        return note(f"ROC curves are drawn for the binary task; this run is {task} (its macro one-vs-rest AUC is in "
                    "the table).")
    if not run.layout.roc_png.is_file():
        return note("No ROC plot: automl ensemble writes ensemble/roc.png for binary runs.", "warn")
    return html.Div([html.H3("ROC, test split"), html.Img(src=f"/files/{quote(run.name)}/roc.png", className="plot")],
                    className="card")


def _downloads(run: Run, models: Models) -> html.Div:
    files = f"/files/{quote(run.name)}"
    items = [html.A("exported model (zip of model/: model.keras, saved_model/, model card)", href=f"{files}/model.zip",
                    id="download-model") if models.model_dir
             else f"No exported model: automl export {run.name} --out {run.layout.model.root} writes one."]
    if model_card(run.path):
        items.append(html.A("model card (markdown)", href=f"{files}/model_card.md", id="download-card"))
    if run.layout.report.is_file():
        items.append(html.A("ensemble report (markdown)", href=f"{files}/report.md"))
    return html.Div([html.H3("Downloads"), html.Ul([html.Li(item) for item in items])], className="card")


def _evaluations(run: Run, models: Models) -> html.Div:
    """The exported model's external evaluations (automl evaluate): images, melanoma and malignant AUC, report."""
    if not models.model_dir:
        return html.Div()
    evaluations, messages = load_evaluations(run)
    title = html.H3("External evaluations (measured only, never used to choose anything)")
    if not evaluations:
        return html.Div([title, *[note(m, "warn") for m in messages],
                         note(f"None yet: automl evaluate {run.layout.model.root} --data DIR writes one into "
                              f"{run.layout.model.evaluations}/.")], className="card")

    def auc(metrics: dict, question: str) -> list:
        section = metrics.get(question) or {}
        low_high = (section.get("ci95") or {}).get("auc") or [None, None]
        interval = "" if None in low_high else f"[{low_high[0]:.3f},\u00a0{low_high[1]:.3f}]"
        return [_fmt(section.get("auc")), html.Br(), html.Small(interval), html.Br(),
                html.Small(section.get("score", "-"), className="muted")]

    rows = [[name, (metrics.get("images") or {}).get("scored", "-"), auc(metrics, "melanoma"),
             auc(metrics, "malignant"),
             html.A("report.md", href=f"/files/{quote(run.name)}/evaluations/{quote(name)}/report.md")]
            for name, metrics in evaluations]
    header = ["evaluation", "images", "melanoma vs rest AUC", "malignant vs benign AUC", "report"]
    return html.Div([title, *[note(m, "warn") for m in messages], _table(header, rows, "evaluations")],
                    className="card")


def compare_page(results_dir: Path, selected: list[str]) -> list:
    """Runs overlaid: best so far vs trials and vs wall time, and their best numbers side by side."""
    names = run_names(results_dir)
    if not names:
        return [html.H2("Compare"), note(f"No runs in {results_dir} to compare.")]
    chosen = [n for n in selected if n in names] or names
    picker = dcc.Dropdown(id="compare-runs", options=names, value=chosen, multi=True, clearable=False)
    runs = [load_run(results_dir, n) for n in chosen]
    content = [html.H2("Compare"), html.Div(picker, className="picker"),
               *[note(f"{r.name}: {m}", "warn") for r in runs for m in r.messages]]
    metrics = sorted({r.metric for r in runs})
    if len(metrics) > 1:
        content.append(note(f"These runs optimise different metrics ({', '.join(metrics)}): each curve is its own "
                            "run's metric.", "warn"))
    by_trial = {r.name: figures.best_by_trial(r.trials, r.objective).drop(columns="status") for r in runs}
    by_time = {r.name: figures.best_by_time(r.epochs, r.objective) for r in runs}
    untimed = [n for n, curve in by_time.items() if curve is None]
    timed = {n: curve for n, curve in by_time.items() if curve is not None}
    time_note = f"wall time not recorded for: {', '.join(untimed)}" if untimed else ""
    time_figure = figures.note_figure("best so far vs wall time", NO_WALL_TIME)
    if timed:
        time_figure = figures.best_so_far(timed, "seconds", "wall time", "seconds since the first epoch", metrics[0],
                                          note=time_note)
    header = ["run", "status", "searcher", "scheduler", "trials (completed/pruned/errored)", "epochs trained", "metric",
              "best", "best trial's macro-F1", "duration"]
    rows, bars = [], []
    for run in runs:
        counts, best_row = run.counts(), _best_row(run)
        rows.append([dcc.Link(run.name, href=_run_href(run.name)), _status(run.status), run.info.get("searcher", "-"),
                     run.info.get("scheduler", "-"), "/".join(str(counts.get(s, 0)) for s in STATUSES[1:]),
                     len(run.epochs), run.metric, _fmt(run.best()), _fmt(best_row.get(best_column("val_macro_f1"))),
                     _duration(run.duration_s())])
        bars.append({"model": run.name, **{m: best_row.get(best_column(f"val_{m}")) for m in HEADLINE}})
    by_trials = figures.best_so_far(by_trial, "trial", "trials", "trials in start order", metrics[0])
    by_epochs = figures.best_so_far(by_trial, "epochs_so_far", "epochs trained",
                                    "epochs trained by all trials so far (in start order)", metrics[0])
    bests = figures.metric_bars(bars, HEADLINE, "best trial of each run, validation split")
    return [*content, _table(header, rows, "compare"),
            html.Div([_graph(by_trials, "compare-trials"), _graph(by_epochs, "compare-epochs"),
                      _graph(time_figure, "compare-time"), _graph(bests, "compare-bars")], className="grid2")]


def _best_row(run: Run) -> dict:
    if run.score_column not in run.trials or run.trials[run.score_column].isna().all():
        return {}
    return run.objective.sort(run.trials, run.score_column).iloc[0].to_dict()
