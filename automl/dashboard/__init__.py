"""``automl dashboard``: a read-only web view of the results store that refreshes while searches run.

Pages: every experiment under the results folder; one experiment (best so far against wall time
and trials, learning curves with ASHA's stops marked, parallel coordinates, hyperparameter
importance, a sortable and filterable leaderboard with what each trial cost, narrowed to one model family
on request); its retrained models and ensemble next to the
published numbers, with downloads of the exported model and its card; and several experiments
overlaid. It reads only the files of :mod:`automl.store` and the retrain/ensemble/export stages,
never Ray or TensorFlow, and serves every script and style itself (no CDN).
"""

from __future__ import annotations

from pathlib import Path

from automl.dashboard._app import REFRESH_S, create_app

__all__ = ["REFRESH_S", "create_app", "serve"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(results_dir: Path | str, host: str = "127.0.0.1", port: int = 8050, shown: str | None = None) -> None:
    """Serve the dashboard of ``results_dir`` at ``http://HOST:PORT/`` until interrupted; ``shown`` names the results
    where ``results_dir`` is a local view of them (a URI's, :func:`automl.remote.kept_pulled`)."""
    import os
    import socket

    from automl import console
    from automl.errors import UserError

    try:  # werkzeug would print three lines and exit 1; this is the house's one line and exit 2
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UserError(f"--host {host} --port {port}: cannot listen there "
                        f"({os.strerror(exc.errno) if exc.errno else exc}); choose another --port") from None
    app = create_app(results_dir, shown)
    if host not in LOOPBACK:
        console.info(f"warning: serving on {host}: anyone who can reach it can read these results (there is no login)")
    console.info(f"dashboard of {shown or Path(results_dir).resolve()} at http://{host}:{port}/ (Ctrl-C stops it)")
    app.run(host=host, port=port, debug=False)
