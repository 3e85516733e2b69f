"""Plotly figures: pure functions of the store's DataFrames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from automl.layout import best_column, hyperparameter_columns, hyperparameter_name
from automl.objective import Objective

STATUS_COLOURS = {"completed": "#1f77b4", "pruned": "#8c96a3", "running": "#2ca02c", "errored": "#ff7f0e"}
STOPPED_COLOUR = "#d62728"
# Axes of the parallel-coordinates plot beyond which labels collide at page width.
MAX_AXES = 10
#: Beyond these many trials a figure draws a sample (the best ones and an even spread of the rest by rank) and says
#: so, so that a page of a 10,000-trial search stays a few hundred kB and quick to draw.
MAX_CURVES, MAX_LINES, MAX_DOTS = 300, 1000, 2000


def _figure(*traces) -> go.Figure:
    # No plotly.py template: copying the default one costs ~35 ms per figure; plotly.js's own defaults look fine.
    return go.Figure(data=list(traces), layout={"template": "none"})


def _layout(fig: go.Figure, title: str, x_title: str = "", y_title: str = "", height: int = 360) -> go.Figure:
    # uirevision keeps the user's zoom and hidden traces when a refresh replaces the figure.
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left"}, height=height,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, xaxis_title=x_title, yaxis_title=y_title,
                      uirevision="keep", legend={"font": {"size": 11}})
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def note_figure(title: str, text: str) -> go.Figure:
    """An empty figure that says why it is empty."""
    fig = _layout(_figure(), title)
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def sample_trials(trials: pd.DataFrame, objective: Objective, limit: int) -> tuple[pd.DataFrame, str]:
    """At most ``limit`` trials, in their order: the best third of them by ``objective``, and an even spread of the
    others by rank; and a note saying what was drawn (empty when every trial was)."""
    column = best_column(objective.name)
    if len(trials) <= limit:
        return trials, ""
    ranked = objective.sort(trials, column) if column in trials else trials
    best = limit // 3
    spread = np.linspace(best, len(ranked) - 1, limit - best).round().astype(int)
    picked = ranked.iloc[np.unique(np.concatenate([np.arange(best), spread]))]
    return (trials.loc[trials.index.isin(picked.index)],
            f"{len(picked):,} of {len(trials):,} trials drawn: the {best} best and an even spread of the rest by rank")


def steps(curve: pd.DataFrame, column: str = "best") -> pd.DataFrame:
    """The rows of a step curve where ``column`` changes, and the last: the same line, a fraction of the points."""
    values = curve[column]
    changed = values.ne(values.shift()) & ~(values.isna() & values.shift().isna())
    changed.iloc[-1:] = True
    return curve[changed]


def best_by_time(epochs: pd.DataFrame, objective: Objective) -> pd.DataFrame | None:
    """Best-so-far objective against seconds since the run's first epoch; ``None`` when epochs have no timestamp."""
    metric = objective.name
    if "timestamp" not in epochs or metric not in epochs:
        return None
    scored = epochs[["timestamp", metric]].dropna().sort_values("timestamp", kind="stable")
    if scored.empty:
        return None
    best = objective.running_best(scored[metric])
    seconds = scored["timestamp"] - scored["timestamp"].iloc[0]
    return steps(pd.DataFrame({"seconds": seconds.to_numpy(), "best": best.to_numpy()}))


def best_by_trial(trials: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """Each trial's best value in start order (``started_at`` when recorded, else file order), the best so far,
    and the epochs trained by then (a proxy for compute when wall time was not recorded)."""
    column = best_column(objective.name)
    if column not in trials:
        return pd.DataFrame(columns=["trial", "trial_id", "status", "value", "best", "epochs_so_far"])
    ordered = trials.sort_values("started_at", kind="stable") if "started_at" in trials else trials
    values = ordered[column].astype(float)
    best = objective.running_best(values).ffill()
    return pd.DataFrame({"trial": np.arange(1, len(ordered) + 1), "trial_id": ordered["trial_id"].to_numpy(),
                         "status": ordered["status"].to_numpy(), "value": values.to_numpy(), "best": best.to_numpy(),
                         "epochs_so_far": ordered["epochs"].fillna(0).cumsum().to_numpy()})


def best_so_far(curves: dict[str, pd.DataFrame], x: str, title: str, x_title: str, metric: str,
                note: str = "") -> go.Figure:
    """Step lines of best-so-far ``metric``, one per run; a single run also gets its trials as dots by status (beyond
    :data:`MAX_DOTS` trials, every k-th trial and every trial that set a new best)."""
    fig = _layout(_figure(), f"best so far vs {title}", x_title, metric)
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.3, "x": 0}, margin_b=90)
    for name, curve in curves.items():
        line = steps(curve) if len(curve) else curve
        fig.add_scatter(x=line[x], y=line["best"], mode="lines", line_shape="hv", name=f"{name} best so far")
        if len(curves) == 1 and "status" in curve:
            dots, every = curve.dropna(subset=["value"]), ""
            if len(dots) > MAX_DOTS:
                k = -(-len(dots) // MAX_DOTS)
                dots = dots[(np.arange(len(dots)) % k == 0) | dots.index.isin(steps(dots).index)]
                every = f", 1 in {k}"
            for status, group in dots.groupby("status"):
                fig.add_scatter(x=group[x], y=group["value"], mode="markers", name=f"trial ({status}{every})",
                                text=group["trial_id"], marker={"color": STATUS_COLOURS.get(status), "size": 6},
                                hovertemplate="trial %{text}<br>%{y:.4f}<extra></extra>")
    if note:
        fig.add_annotation(text=note, showarrow=False, xref="paper", yref="paper", x=0.02, y=1.0, xanchor="left",
                           yanchor="bottom", font={"size": 11, "color": "#555"})
    return fig


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, scheduler: str | None,
                    note: str = "") -> go.Figure:
    """``metric`` per epoch for every trial of ``trials`` (``note``: which, when a sample), coloured by status; each
    pruned trial's last epoch is a red x."""
    title = f"learning curves: {metric} per epoch" + (f"<br><sup>{note}</sup>" if note else "")
    if metric not in epochs or epochs.empty:
        return note_figure(title, "no epoch recorded yet")
    status = trials.set_index("trial_id")["status"] if "status" in trials else pd.Series(dtype=str)
    if note:
        epochs = epochs[epochs["trial_id"].isin(trials["trial_id"])]
    scored = epochs[["trial_id", "epoch", metric]].dropna().sort_values(["trial_id", "epoch"], kind="stable")
    scored = scored.assign(status=scored["trial_id"].map(status).fillna("running"))
    fig = _layout(_figure(), title, "epoch", metric, height=420)
    if note:
        fig.update_layout(margin_t=75)
    for name, group in scored.groupby("status"):
        # One trace per status with gaps between trials: 200 trials stay a handful of traces.
        gap = group.groupby("trial_id", sort=False).tail(1).assign(epoch=np.nan, **{metric: np.nan})
        joined = pd.concat([group, gap]).sort_values(["trial_id", "epoch"], kind="stable", na_position="last")
        fig.add_scatter(x=joined["epoch"], y=joined[metric], text=joined["trial_id"], mode="lines+markers",
                        name=f"{name} ({group['trial_id'].nunique()})", connectgaps=False, opacity=0.75,
                        line={"color": STATUS_COLOURS.get(name, "#555"), "width": 1.3}, marker={"size": 3},
                        hovertemplate="trial %{text}<br>epoch %{x}<br>%{y:.4f}<extra></extra>")
    stopped = scored[scored["status"] == "pruned"].groupby("trial_id").tail(1)
    if not stopped.empty:
        label = "stopped by ASHA at its rung" if scheduler == "asha" else "stopped early (pruned)"
        fig.add_scatter(x=stopped["epoch"], y=stopped[metric], text=stopped["trial_id"], mode="markers", name=label,
                        marker={"symbol": "x", "size": 10, "color": STOPPED_COLOUR, "line": {"width": 1}},
                        hovertemplate="trial %{text} stopped after epoch %{x}<extra></extra>")
    return fig


def parallel_coordinates(trials: pd.DataFrame, metric: str, order: list[str], log_scaled: frozenset[str],
                         note: str = "") -> go.Figure:
    """Hyperparameters (``order`` first, at most ``MAX_AXES``; ``log_scaled`` in log10) against the best ``metric``,
    one line per trial of ``trials`` (``note``: which, when a sample)."""
    column = best_column(metric)
    scored = trials[trials[column].notna()] if column in trials else trials.iloc[:0]
    varying = [hyperparameter_name(c) for c in hyperparameter_columns(scored) if scored[c].nunique(dropna=False) > 1]
    names = ([n for n in order if n in varying] + sorted(n for n in varying if n not in order))[:MAX_AXES]
    title = f"hyperparameters vs {column}"
    if len(varying) > len(names):
        title += f" (the {len(names)} most important of {len(varying)})"
    if note:
        title += f"<br><sup>{note}</sup>"
    if len(scored) < 2 or not names:
        return note_figure(title, "needs 2 trials with a value and a hyperparameter that varies")
    dimensions = [_axis(name, scored[f"hp_{name}"], name in log_scaled) for name in names]
    dimensions.append({"label": metric, "values": scored[column]})
    fig = _figure(go.Parcoords(line={"color": scored[column], "colorscale": "Viridis", "showscale": True},
                                 dimensions=dimensions, labelangle=-15, labelside="top"))
    fig = _layout(fig, title, height=440)
    fig.update_layout(margin={"l": 70, "r": 60, "t": 110, "b": 30})
    return fig


def _axis(name: str, values: pd.Series, log: bool) -> dict:
    """One parallel-coordinates axis: categories as ticks, ``log`` ranges in log10, missing values as 'absent'."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        codes, labels = pd.factorize(values.astype(object).where(values.notna(), "absent").astype(str), sort=True)
        return {"label": name, "values": codes, "tickvals": list(range(len(labels))), "ticktext": list(labels)}
    numbers = values.astype(float)
    low, high = numbers.min(), numbers.max()
    if log and low > 0:
        name, numbers, low, high = f"log10 {name}", np.log10(numbers), np.log10(low), np.log10(high)
    if not numbers.isna().any():
        return {"label": name, "values": numbers}
    # A conditional hyperparameter: trials without it sit on a tick of their own below the range.
    absent = low - 0.2 * ((high - low) or 1.0)
    ticks = list(np.linspace(low, high, 4))
    return {"label": name, "values": numbers.fillna(absent), "tickvals": [absent, *ticks],
                "ticktext": ["absent", *[f"{t:.3g}" for t in ticks]]}


def importance_bars(importances: dict[str, float]) -> go.Figure:
    """Horizontal bars, most important on top."""
    names = list(importances)[::-1]
    fig = _figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h", marker_color="#1f77b4"))
    return _layout(fig, "hyperparameter importance", "share of the metric's variation explained", "",
                   height=min(560, 90 + 16 * len(names)))


def metric_bars(rows: list[dict], metrics: tuple[str, ...], title: str) -> go.Figure:
    """Grouped bars: one group per model (``rows[i]['model']``), one bar per metric."""
    fig = _figure()
    for metric in metrics:
        fig.add_bar(x=[r["model"] for r in rows], y=[r.get(metric) for r in rows], name=metric.replace("_", " "))
    fig = _layout(fig, title, "", "")
    fig.update_layout(barmode="group", yaxis_range=[0, 1])
    return fig


def confusion_matrix(matrix: list[list[int]], classes: list[str], title: str) -> go.Figure:
    """Counts as text; colour is the share of each true class (row), so small classes stay readable."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(go.Heatmap(z=shares, x=classes, y=classes, text=counts.astype(int), texttemplate="%{text}",
                               colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "share of row"},
                               hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>"))
    fig = _layout(fig, title, "predicted", "true", height=460)
    fig.update_yaxes(autorange="reversed")
    return fig
