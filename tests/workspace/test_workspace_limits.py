"""Request size limits over real HTTP: JSON bodies up to 5 MB, uploads up to their own, larger
cap (``$CML_WORKSPACE_MAX_UPLOAD_MB``); over it HTTP 413 in CML's error shape, decided from
``Content-Length`` before reading, or by counting a streamed body, never by holding it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from workspace_helpers import RUNTIME, WorkspaceServer, running_workspace

from cml_workspace.server_process import WorkspaceStartError

MB = 1024 * 1024
UPLOAD_CAP_MB = 8  # larger than the 5 MB JSON cap, as in production (default 512)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkspaceServer]:
    env = {"CML_WORKSPACE_MAX_UPLOAD_MB": str(UPLOAD_CAP_MB)}
    with running_workspace(tmp_path_factory.mktemp("limits"), env=env) as ws:
        yield ws


@pytest.fixture
def http(ws: WorkspaceServer) -> Iterator[httpx.Client]:
    with ws.client() as client:
        yield client


def job_body(name: str, size: int) -> bytes:
    """A CreateJobRequest of about ``size`` bytes (the bulk in ``description``)."""
    body = {"name": name, "script": "x.py", "runtime_identifier": RUNTIME, "description": "x" * size}
    return json.dumps(body).encode()


def streamed(data: bytes | None = None, *, repeat: int = 1, head: bytes = b"", tail: bytes = b"") -> Iterator[bytes]:
    """A body without Content-Length (chunked): ``head``, ``data`` ``repeat`` times, ``tail``.
    The same chunk object is yielded again and again, so the client holds one chunk only."""
    yield head
    for _ in range(repeat):
        yield data or b""
    yield tail


def assert_too_large(resp: httpx.Response, limit: str) -> None:
    assert resp.status_code == 413, resp.text
    body = resp.json()
    assert set(body) == {"error", "code", "message", "details"}
    assert body["code"] == 8  # RESOURCE_EXHAUSTED
    assert body["details"] == []
    assert body["message"] == body["error"]
    assert f"limited to {limit}" in body["message"]


def job_names(http: httpx.Client, ws: WorkspaceServer) -> set[str]:
    resp = http.get(f"/api/v2/projects/{ws.project_id}/jobs", params={"page_size": 1000})
    assert resp.status_code == 200, resp.text
    return {job["name"] for job in resp.json()["jobs"]}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_json_body_over_5_mb_is_refused_and_not_stored(ws, http):
    jobs = f"/api/v2/projects/{ws.project_id}/jobs"
    resp = http.post(jobs, content=job_body("too-big", 6 * MB), headers={"content-type": "application/json"})
    assert_too_large(resp, "5 MB")
    assert "too-big" not in job_names(http, ws)
    # just under the cap is fine, and the server carries on
    ok = http.post(jobs, content=job_body("just-fits", 5 * MB - 1024), headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text[:300]
    assert "just-fits" in job_names(http, ws)


def test_a_streamed_body_without_length_is_cut_off_at_the_cap_without_being_held(ws, http):
    """200 MB sent chunked (no Content-Length): counted as it arrives and refused at 5 MB;
    the server's peak memory shows it never held the body."""
    before = peak_rss_mb(ws.pid)
    body = streamed(b"x" * (64 * 1024), repeat=200 * 16,
                    head=b'{"name": "streamed", "script": "x.py", "description": "', tail=b'"}')
    resp = http.post(f"/api/v2/projects/{ws.project_id}/jobs", content=body,
                     headers={"content-type": "application/json"})
    assert_too_large(resp, "5 MB")
    assert peak_rss_mb(ws.pid) < before + 100
    assert "streamed" not in job_names(http, ws)
    assert http.get("/health").status_code == 200


def test_a_declared_200_mb_body_is_refused_before_it_is_read(ws, http):
    before = peak_rss_mb(ws.pid)
    resp = http.post(f"/api/v2/projects/{ws.project_id}/jobs", content=job_body("huge", 200 * MB),
                     headers={"content-type": "application/json"})
    assert_too_large(resp, "5 MB")
    assert peak_rss_mb(ws.pid) < before + 100
    assert "huge" not in job_names(http, ws)


def test_uploads_have_their_own_larger_cap(ws, http):
    files = f"/api/v2/projects/{ws.project_id}/files"
    # over the JSON cap but under the upload cap: stored
    ok = http.post(files, files={"snapshots/six.bin": ("six.bin", b"s" * (6 * MB), "application/octet-stream")})
    assert ok.status_code == 200, ok.text
    assert ok.json()["files"][0]["file_size"] == str(6 * MB)
    # over the upload cap: refused, nothing stored
    big = http.post(files, files={"snapshots/nine.bin": ("nine.bin", b"n" * (9 * MB), "application/octet-stream")})
    assert_too_large(big, f"{UPLOAD_CAP_MB} MB")
    listed = {f["path"] for f in http.get(f"{files}/snapshots").json()["files"]}
    assert listed == {"six.bin"}


def test_a_streamed_upload_is_cut_off_at_the_upload_cap(ws, http):
    boundary = "limit-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"streamed/big.bin\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    resp = http.post(f"/api/v2/projects/{ws.project_id}/files",
                     content=streamed(b"b" * (64 * 1024), repeat=UPLOAD_CAP_MB * 16 + 16, head=head, tail=tail),
                     headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_too_large(resp, f"{UPLOAD_CAP_MB} MB")
    assert http.get(f"/api/v2/projects/{ws.project_id}/files/streamed").status_code == 404


def test_authentication_comes_before_the_size_check(ws):
    resp = httpx.post(f"{ws.url}/api/v2/projects/{ws.project_id}/jobs", content=job_body("anon", 6 * MB),
                      headers={"content-type": "application/json"})
    assert resp.status_code == 401
    assert resp.json()["code"] == 16


def test_an_invalid_upload_cap_stops_the_server_at_start(tmp_path):
    with pytest.raises(WorkspaceStartError, match="CML_WORKSPACE_MAX_UPLOAD_MB must be a positive number"):
        with running_workspace(tmp_path / "ws", project="", env={"CML_WORKSPACE_MAX_UPLOAD_MB": "lots"}):
            pass
