"""The Dash app: routing, the refresh loop, and the read-only file route for downloads."""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode

import dash
import flask
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from automl.dashboard import _pages as pages
from automl.dashboard._runs import model_card, run_path, signature
from automl.layout import RunLayout

REFRESH_S = 4
ASSETS = Path(__file__).with_name("assets")
# The only files the file route serves, by the name in the URL: anything else is a 404.
EVALUATION_FILES = ("report.md", "roc.png", "reliability.png")  # of the exported model's evaluations/NAME/
log = logging.getLogger(__name__)


def create_app(results_dir: Path | str, shown: str | None = None) -> dash.Dash:
    """The dashboard of ``results_dir`` as a Dash app (``app.server`` is its Flask app); read-only. The header names
    the results ``shown`` (a URI whose local view ``results_dir`` is), or ``results_dir``."""
    results_dir = Path(results_dir)
    # serve_locally: React, the renderer and plotly.js come from the installed packages, the style from assets/.
    app = dash.Dash(__name__, title="skin-automl dashboard", serve_locally=True, assets_folder=str(ASSETS),
                    suppress_callback_exceptions=True, update_title=None, enable_mcp=False)
    app.layout = html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        dcc.Interval(id="refresh", interval=REFRESH_S * 1000),
        dcc.Store(id="shown"),
        html.Header([html.Span("skin-automl", className="title"), dcc.Link("Experiments", href="/"),
                     dcc.Link("Compare", href="/compare"),
                     html.Span(f"results: {shown or results_dir.resolve()} · refreshes every {REFRESH_S} s",
                               className="where")]),
        html.Main(id="page"),
    ])

    @app.callback(Output("page", "children"), Output("shown", "data"), Input("url", "pathname"),
                  Input("url", "search"), Input("refresh", "n_intervals"), State("shown", "data"))
    def render(pathname, search, _tick, shown):
        # Re-render only when the page's files changed: a refresh of an unchanged page keeps sorting, zoom and scroll.
        parts = [unquote(p) for p in (pathname or "/").strip("/").split("/") if p]
        run = parts[1] if parts[:1] == ["runs"] and len(parts) > 1 else None
        current = f"{pathname}?{search}|{signature(results_dir, run)}"
        if current == shown:
            raise PreventUpdate
        return render_page(results_dir, parts, search or ""), current

    @app.callback(Output("leaderboard", "data"), Output("leaderboard", "page_count"),
                  Output("leaderboard", "page_current"),
                  Input("leaderboard", "page_current"), Input("leaderboard", "sort_by"),
                  Input("leaderboard", "filter_query"), Input("leaderboard-family", "value"),
                  State("url", "pathname"))
    def leaderboard_page(page, sort_by, filter_query, family, pathname):
        # The leaderboard holds one page: its sorting, filtering and paging are done here, on the whole table.
        parts = [unquote(p) for p in (pathname or "/").strip("/").split("/") if p]
        if parts[:1] != ["runs"] or len(parts) < 2:
            raise PreventUpdate
        changed = set(dash.ctx.triggered_prop_ids)
        if changed and "leaderboard.page_current" not in changed:
            page = 0  # other rows: a new sort, filter or family starts at their first page
        return pages.leaderboard_rows(results_dir, parts[1], page or 0, sort_by or [], filter_query or "", family)

    @app.callback(Output("url", "search"), Input("compare-runs", "value"), State("url", "search"),
                  prevent_initial_call=True)
    def choose_runs(selected, search):
        wanted = "?" + urlencode([("run", n) for n in selected or []])
        if wanted == (search or "?"):
            raise PreventUpdate
        return wanted

    app.server.add_url_rule("/files/<name>/<artifact>", "files",
                            lambda name, artifact: _file(results_dir, name, artifact))
    app.server.add_url_rule("/files/<name>/evaluations/<evaluation>/<artifact>", "evaluation_files",
                            lambda name, evaluation, artifact: _file(results_dir, name, artifact, evaluation))
    return app


def render_page(results_dir: Path, parts: list[str], search: str) -> list:
    """The page for a URL path (split into its parts) and query string; any failure is a message, not a 500."""
    try:
        match parts:
            case []:
                page = pages.experiments_page(results_dir)
            case ["compare"]:
                page = pages.compare_page(results_dir, parse_qs(search.lstrip("?")).get("run", []))
            case ["runs", name]:
                page = pages.experiment_page(results_dir, name)
            case ["runs", name, "models"]:
                page = pages.models_page(results_dir, name)
            case _:
                page = [pages.note(f"No page at /{'/'.join(parts)}.", "error"), dcc.Link("all experiments", href="/")]
    except Exception as exc:  # a file shape no reader foresaw: said on the page, the details in the log
        log.exception("rendering /%s failed", "/".join(parts))
        page = [pages.note(f"This page could not be drawn ({type(exc).__name__}: {exc}); the server log has the "
                           "details.", "error")]
    return [*page, html.P(f"updated {time.strftime('%H:%M:%S')}", className="muted")]


def _file(results_dir: Path, name: str, artifact: str, evaluation: str | None = None) -> flask.Response:
    """A run's exported model (zipped on the fly), model card, report or ROC plot, or a file of one of the exported
    model's evaluations (:data:`EVALUATION_FILES`); 404 for anything else.

    Only files whose real path (symbolic links resolved) lies inside the results folder are served, and the zip
    holds only files whose real path lies inside the run's model folder: a link to /etc/passwd is never sent.
    """
    run_dir = run_path(results_dir, name)
    if run_dir is None:
        flask.abort(404)
    root = Path(results_dir).resolve()
    run = RunLayout(run_dir)
    model_dir = run.model.root.resolve()
    if evaluation is not None:
        return _evaluation_file(run_dir, root, name, evaluation, artifact)
    if artifact == "model.zip" and model_dir.is_dir() and model_dir.is_relative_to(root):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(model_dir.rglob("*")):
                if path.is_file() and path.resolve().is_relative_to(model_dir):
                    archive.write(path.resolve(), Path(f"{name}_model") / path.relative_to(model_dir))
        buffer.seek(0)
        return flask.send_file(buffer, mimetype="application/zip", as_attachment=True,
                               download_name=f"{name}_model.zip")
    if artifact == "model_card.md":
        path = model_card(run_dir)
    else:
        path = {p.name: p for p in (run.report, run.roc_png)}.get(artifact)
    if path is None or not path.is_file() or not path.resolve().is_relative_to(root):
        flask.abort(404)
    return flask.send_file(path.resolve(), as_attachment=path.suffix == ".md", download_name=f"{name}_{artifact}")


def _evaluation_file(run_dir: Path, root: Path, name: str, evaluation: str, artifact: str) -> flask.Response:
    """A file of an evaluation the run's model folder lists, whose real path lies inside the results folder."""
    model = RunLayout(run_dir).model
    if evaluation not in model.evaluation_names() or artifact not in EVALUATION_FILES:
        flask.abort(404)
    path = model.evaluation(evaluation).root / artifact
    if not path.is_file() or not path.resolve().is_relative_to(root):
        flask.abort(404)
    return flask.send_file(path.resolve(), as_attachment=path.suffix == ".md",
                           download_name=f"{name}_{evaluation}_{artifact}")
