"""``automl submit`` and ``automl jobs``: searches as Ray jobs on a cluster, through Ray's Jobs API.

A job ships the spec and the ``automl`` package (``runtime_env`` ``py_modules``), never the data:
``--data`` is a path on the cluster. The cluster's Python must already have automl's dependencies
(the images in ``cluster/`` install them). Ray's token authentication is honoured: the token comes
from ``--token``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, in that order.

>>> resolve_token("abc")
'abc'
>>> jobs_url("10.0.0.5")
'http://10.0.0.5:8265'
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from automl.errors import UserError

#: The Jobs API port of ``ray start --head`` (the dashboard's port).
JOBS_PORT = 8265
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def resolve_token(token: str | None = None) -> str | None:
    """The cluster token: the flag, else ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token ({exc.strerror})") from None
    default = Path.home() / ".ray" / "auth_token"
    return default.read_text().strip() if default.is_file() else None


def check_job_id(job_id: str) -> str:
    """``job_id`` if it can name a job; a one-line :class:`UserError` for an empty or malformed one.

    >>> check_job_id("automl-quick-3fa2c1")
    'automl-quick-3fa2c1'
    """
    if not job_id or not job_id.strip():
        raise UserError("job id: empty; copy one from automl jobs list")
    # The id becomes part of a URL path (/api/jobs/<id>): these characters would make it another URL.
    bad = sorted({c for c in job_id if c.isspace() or not c.isprintable() or c in "/\\?#%"})
    if bad:
        shown = " ".join(map(repr, bad))
        raise UserError(f"job id {job_id!r}: must not contain {shown}; copy one from automl jobs list")
    return job_id


def jobs_url(address: str) -> str:
    """``HOST``, ``HOST:PORT`` or a full URL, as the Jobs API's base URL."""
    if "://" not in address:
        address = f"http://{address}"
    scheme, _, rest = address.partition("://")
    host, slash, path = rest.partition("/")
    if ":" not in host:
        host = f"{host}:{JOBS_PORT}"
    return f"{scheme}://{host}{slash}{path}".rstrip("/")


class Jobs:
    """A connection to a cluster's Jobs API; every failure becomes a one-line :class:`UserError`."""

    def __init__(self, address: str, token: str | None = None):
        self.url = jobs_url(address)
        token = resolve_token(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._had_token = bool(token)
        from ray.job_submission import JobSubmissionClient

        for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)  # not Ray's "Uploading package ..." lines

        try:
            self.client = JobSubmissionClient(self.url, headers=headers)
            self.client.list_jobs()  # /api/version needs no token: check it now, not at the first real call
        except Exception as exc:  # noqa: BLE001 - Ray raises several types; each becomes one line
            raise self._explain(exc) from None

    def submit(self, entrypoint: list[str], files: dict[str, Path], name: str,
               env: dict[str, str] | None = None) -> str:
        """Start ``entrypoint`` with ``files`` in its working directory and automl importable; returns the job id."""
        import automl

        job_id = f"automl-{name}-{secrets.token_hex(3)}"
        with tempfile.TemporaryDirectory(prefix="automl-job-") as staging:
            for target, source in files.items():
                shutil.copy(source, Path(staging) / target)
            runtime_env = {
                "working_dir": staging,
                "py_modules": [str(Path(automl.__file__).parent)],
                # A stopped job gets 30 s (Ray's default is 3) to checkpoint and mark its run interrupted.
                "env_vars": {"PYTHONUNBUFFERED": "1", "RAY_JOB_STOP_WAIT_TIME_S": "30", **(env or {})},
            }
            deadline = time.monotonic() + 60
            while True:
                try:
                    return self._call(self.client.submit_job, entrypoint=shlex.join(entrypoint),
                                      submission_id=job_id, runtime_env=runtime_env)
                except UserError as exc:
                    # A freshly started head takes a few seconds before its agent takes jobs.
                    if "No available agent" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(2)

    def list(self) -> list:
        """Submitted jobs, newest first (drivers started by hand have no submission id and are left out)."""
        jobs = [job for job in self._call(self.client.list_jobs) if job.submission_id]
        return sorted(jobs, key=lambda job: job.start_time or 0, reverse=True)

    def info(self, job_id: str):
        job_id = check_job_id(job_id)
        return self._call(self.client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        job_id = check_job_id(job_id)
        return self._call(self.client.get_job_logs, job_id)

    def stop(self, job_id: str) -> bool:
        job_id = check_job_id(job_id)
        return self._call(self.client.stop_job, job_id)

    def follow(self, job_id: str, poll_s: float = 2.0) -> Iterator[str]:
        """New log text as it arrives, until the job ends (polling: works through any proxy)."""
        shown = 0
        while True:
            status = self.info(job_id).status
            text = self.logs(job_id)
            if len(text) > shown:
                yield text[shown:]
                shown = len(text)
            if str(status) in TERMINAL or getattr(status, "value", None) in TERMINAL:
                return
            time.sleep(poll_s)

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise self._explain(exc, args[0] if args else None) from None

    def _explain(self, exc: Exception, job_id: str | None = None) -> UserError:
        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        auth_error = type(exc).__name__ == "AuthenticationError"
        if "401" in text or "Missing authentication token" in text or (auth_error and not self._had_token):
            return UserError(f"{self.url}: the cluster wants a token: pass --token, or set RAY_AUTH_TOKEN or "
                             "RAY_AUTH_TOKEN_PATH (on the head node: ray get-auth-token)")
        if "403" in text or auth_error:
            return UserError(f"{self.url}: the cluster rejected the token; get the right one on the head node with "
                             "ray get-auth-token")
        if isinstance(exc, ConnectionError) or "Failed to connect" in text or "Connection refused" in text:
            return UserError(f"{self.url}: no Ray Jobs API answers there; check the address (the head's dashboard "
                             f"port, default {JOBS_PORT}) or forward it with: ray dashboard CLUSTER.yaml")
        if job_id and ("does not exist" in text or "404" in text):
            return UserError(f"job {job_id}: no such job on {self.url}; see automl jobs list")
        return UserError(f"{self.url}: {first[:300]}")


def status_line(job) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
    ended = f"{(job.end_time - job.start_time) / 1000:.0f}s" if job.end_time and job.start_time else "running"
    status = getattr(job.status, "value", job.status)
    message = f"  {job.message}" if job.message and status in ("FAILED", "STOPPED") else ""
    return f"{job.submission_id or job.job_id}  {status:<9}  started {started}  {ended}  {job.entrypoint}{message}"
