"""Send a study to a Ray cluster through the Ray Jobs API: the adapter at the edge.

A study runs on the cluster as one Ray job. Its entrypoint is

    python -m impress.cli study run STUDY_FILE --resume --storage STORAGE

so the driver runs on the head node (where the MLflow server is) and the trials wherever the
cluster has room. `STORAGE` must be shared by every node: Tune keeps the study's state there, and a
later attempt resumes from it.

The submission id is the study's name plus an attempt number, `NAME-1`, `NAME-2`, ... Ray Jobs keeps
every id it has seen, failed and stopped ones included, and refuses a reused one. So: a study never
runs twice at once (a second submit while an attempt is live is refused), and resubmitting an
interrupted study starts the next attempt, which continues the study from its folder.

The project travels as the job's `working_dir` (code and study files, a few hundred KB); its
dependencies (torch, Ray, MLflow, ...) are in the cluster's image. The excluded paths never leave
this machine.

Token authentication (on by default in Ray 2.60): the client presents the cluster's token, read by
Ray from `RAY_AUTH_TOKEN`, else the file at `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`. The token
is never put into the job's runtime environment, metadata or logs; the driver on the head node has
the head's own token. Set `RAY_AUTH_MODE=disabled` to talk to a cluster that runs without tokens.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from impress.study import Study, StudyError

__all__ = [
    "ClusterError",
    "DEFAULT_ADDRESS",
    "DEFAULT_STORAGE",
    "EXCLUDES",
    "submission_id",
    "attempts",
    "entrypoint",
    "runtime_env",
    "submit",
    "status",
    "stop",
]

# The head's Jobs API through a port-forward or SSH tunnel (cluster/README.md); never exposed publicly.
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Where the cluster configs in cluster/ mount the storage every node shares.
DEFAULT_STORAGE = "/mnt/shared/studies"
# Never uploaded: environments, results, local stores, caches and data.
EXCLUDES = [
    ".venv",
    ".git",
    "runs",
    "data",
    "mlflow.db",
    "mlartifacts",
    "mlruns",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.pt",
    "*.db",
]
LIVE = ("PENDING", "RUNNING")


class ClusterError(RuntimeError):
    """The cluster cannot be reached, refuses us, or the request makes no sense; the message says why."""


def submission_id(name: str, attempt: int) -> str:
    return f"{name}-{attempt}"


def attempts(jobs: list[Any], name: str) -> list[tuple[int, Any]]:
    """The study's attempts among a cluster's jobs, oldest first: (attempt number, job details)."""
    pattern = re.compile(rf"{re.escape(name)}-(\d+)")
    found = []
    for job in jobs:
        match = pattern.fullmatch(job.submission_id or "")
        if match:
            found.append((int(match.group(1)), job))
    return sorted(found, key=lambda pair: pair[0])


def entrypoint(study_file: str, storage: str) -> str:
    """The shell command the job runs on the head node (in the uploaded working directory)."""
    args = ["python", "-m", "impress.cli", "study", "run", study_file, "--resume", "--storage", storage]
    return " ".join(shlex.quote(a) for a in args)


def runtime_env(
    working_dir: Path, *, tracking_uri: str | None = None, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The job's runtime environment: the project as working directory, unbuffered output so the
    logs stream as they are written, the MLflow store if one is given, and the submitting
    checkout's git commit and dirty flag (the upload has no `.git`; `impress.provenance` reads them)."""
    env_vars = {"PYTHONUNBUFFERED": "1"}
    if provenance is not None and provenance.get("git_commit"):
        env_vars["IMPRESS_GIT_COMMIT"] = str(provenance["git_commit"])
        env_vars["IMPRESS_GIT_DIRTY"] = str(provenance["git_dirty"])
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    return {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": env_vars}


# ---------------------------------------------------------------------------------------------
# Talking to the cluster


def _client(address: str):
    # NOTE: Ray 2.60 clusters check a token by default, and the client only sends one in token mode.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import logging

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.WARNING)  # one line per uploaded file otherwise
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise ClusterError(_auth_message(address, err)) from None
    except ConnectionError as err:
        raise ClusterError(
            f"cannot reach the Ray Jobs API at {address} ({err}); is the port-forward or SSH tunnel to the "
            f"head's port 8265 up? (cluster/README.md)"
        ) from None


def _auth_message(address: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0]
    return (
        f"the cluster at {address} refused the request ({first}); give this machine the cluster's token: "
        f"~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH (cluster/README.md shows how to fetch it)"
    )


def _call(address: str, action, *args, **kwargs):
    from ray.exceptions import AuthenticationError

    try:
        return action(*args, **kwargs)
    except AuthenticationError as err:
        raise ClusterError(_auth_message(address, err)) from None


def _follow(client, sid: str) -> str:
    """Print the job's log as it is written until the job ends; returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(sid):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(
            f"\n(stopped following; {sid} goes on: `impress status` follows it, `impress stop` ends it)",
            file=sys.stderr,
        )
        return "RUNNING"
    for _ in range(100):  # the log can end a moment before the status turns terminal
        state = client.get_job_status(sid)
        if state.is_terminal():
            return state.value
        time.sleep(0.1)
    return state.value


def submit(
    study_file: str | Path,
    *,
    address: str = DEFAULT_ADDRESS,
    storage: str = DEFAULT_STORAGE,
    working_dir: str | Path = ".",
    tracking_uri: str | None = None,
    follow: bool = True,
) -> int:
    """Submit a study as its next attempt; follow its log if asked. Returns a process exit code."""
    study_path = Path(study_file).resolve()
    study = Study.from_yaml(study_path)  # a malformed file fails here, before anything is sent
    root = Path(working_dir).resolve()
    if not study_path.is_relative_to(root):
        raise StudyError(
            f"{study_file} is outside the working directory {root} that is uploaded; "
            f"put the study file inside it or pass --working-dir"
        )
    if not Path(storage).is_absolute():
        raise ClusterError(f"--storage {storage!r}: give an absolute path on the cluster's shared storage")
    client = _client(address)
    previous = attempts(_call(address, client.list_jobs), study.name)
    live = [job.submission_id for _, job in previous if job.status.value in LIVE]
    if live:
        raise ClusterError(
            f"study {study.name!r} is already running on {address} as {live[-1]}; follow it with "
            f"`impress status {study.name}` or end it with `impress stop {study.name}`"
        )
    attempt = previous[-1][0] + 1 if previous else 1
    sid = submission_id(study.name, attempt)
    from impress.provenance import provenance

    prov = provenance()
    try:
        _call(
            address,
            client.submit_job,
            entrypoint=entrypoint(study_path.relative_to(root).as_posix(), storage),
            submission_id=sid,
            runtime_env=runtime_env(root, tracking_uri=tracking_uri, provenance=prov),
            metadata={
                "impress.study": study.name,
                "impress.attempt": str(attempt),
                "git_commit": str(prov["git_commit"]),
                "git_dirty": str(prov["git_dirty"]),
            },
        )
    except RuntimeError as err:
        if "already exists" in str(err):  # another submit took this attempt a moment ago
            raise ClusterError(f"{sid} was just submitted by someone else; see `impress status {study.name}`") from None
        raise
    what = "resumes" if attempt > 1 else "starts"
    print(f"submitted {sid} to {address}: {what} study {study.name!r} in {storage}/{study.name}", file=sys.stderr)
    if not follow:
        return 0
    final = _follow(client, sid)
    print(f"{sid}: {final}", file=sys.stderr)
    return 0 if final == "SUCCEEDED" else 1


def status(name: str, *, address: str = DEFAULT_ADDRESS, follow: bool = False) -> int:
    """Print every attempt of a study; follow the latest one's log if asked. Returns an exit code:
    0 when the latest attempt succeeded or is still live, 1 when it failed or was stopped."""
    client = _client(address)
    found = attempts(_call(address, client.list_jobs), name)
    if not found:
        raise ClusterError(f"no study {name!r} on {address} (no job {submission_id(name, 1)})")
    for _, job in found:
        seconds = ((job.end_time or time.time() * 1000) - (job.start_time or 0)) / 1000 if job.start_time else 0
        message = f"  {job.message.strip().splitlines()[-1][:120]}" if job.message else ""
        print(f"{job.submission_id:<30} {job.status.value:<10} {seconds:8.0f}s{message}")
    latest = found[-1][1]
    if follow:
        final = _follow(client, latest.submission_id)
        return 0 if final in ("SUCCEEDED", *LIVE) else 1
    return 0 if latest.status.value in ("SUCCEEDED", *LIVE) else 1


def stop(name: str, *, address: str = DEFAULT_ADDRESS, wait: float = 60.0) -> int:
    """Stop the study's live attempt and wait for it to end; `impress submit` later resumes the study."""
    client = _client(address)
    live = [job for _, job in attempts(_call(address, client.list_jobs), name) if job.status.value in LIVE]
    if not live:
        print(f"study {name!r} has no live attempt on {address}", file=sys.stderr)
        return 0
    sid = live[-1].submission_id
    _call(address, client.stop_job, sid)
    deadline = time.monotonic() + wait
    while not (state := client.get_job_status(sid)).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not state.is_terminal():
        print(
            f"{sid}: still {state.value} after {wait:g} s; `impress status {name}` tells when it ends", file=sys.stderr
        )
        return 1
    print(f"{sid}: {state.value}; resubmit the study file to continue it", file=sys.stderr)
    return 0
