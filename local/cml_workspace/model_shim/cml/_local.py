"""State shared by ``cml.models_v1`` and ``cml.metrics_v1`` inside a replica, and the HTTP
channel to the workspace for what is not tied to one prediction (stdlib only).

A replica answers one call at a time, so one "current prediction" is enough. Predictions
made with ``@cml_model(metrics=True)`` are recorded here and collected by the replica
(:func:`take_records`) after each call; the workspace stores them with the deployment's CRNs.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

#: set by the workspace in a model replica's environment (``<deployment id>/<replica>``)
REPLICA_ENV = "CML_WORKSPACE_REPLICA"

_current: dict | None = None
_records: list[dict] = []
_warned: set[str] = set()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def in_replica() -> bool:
    return bool(os.environ.get(REPLICA_ENV))


def begin(uuid: str) -> dict:
    global _current
    _current = {"uuid": uuid, "start": now_ms(), "end": None, "metrics": {}}
    return _current


def end(record: dict) -> None:
    global _current
    record["end"] = now_ms()
    if _current is record:
        _current = None
    if in_replica():
        _records.append(record)


def current() -> dict | None:
    return _current


def take_records() -> list[dict] | None:
    """The predictions recorded since the last call (the replica calls this after each call)."""
    global _records
    if not _records:
        return None
    taken, _records = _records, []
    return taken


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(f"[cml stand-in] {message}", file=sys.stderr, flush=True)


def call_workspace(path: str, body: dict[str, Any]) -> Any:
    """POST JSON to the local workspace (``$CML_WORKSPACE_URL``, bearer ``$CDSW_APIV2_KEY``)."""
    url = os.environ.get("CML_WORKSPACE_URL", "").rstrip("/")
    key = os.environ.get("CDSW_APIV2_KEY", "")
    if not url or not key:
        raise RuntimeError("the cml stand-in needs $CML_WORKSPACE_URL and $CDSW_APIV2_KEY "
                           "(set in the local workspace's replicas and runs) to reach the workspace")
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # always the local server
    try:
        with opener.open(request, timeout=60) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise ValueError(f"model metrics: {detail} (HTTP {exc.code})") from None
