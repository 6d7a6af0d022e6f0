"""Deployments and the model service over real HTTP: replicas are real processes serving one
call at a time; ``POST /model`` on the model-service port routes to a free replica."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from workspace_helpers import DEPLOYING, ModelApi

from cml_workspace.builds import SHIM_DIR

# Answers what it was asked, how, where and when; sleeps when asked to; can fail or die.
PROBE = """
import os, sys, time

def predict(args):
    started = time.time()
    if args.get("mark"):  # tells the test this call is being served
        open(args["mark"], "w").close()
    if args.get("sleep"):
        time.sleep(args["sleep"])
    if args.get("raise"):
        raise ValueError(args["raise"])
    if args.get("exit"):
        os._exit(7)
    return {"echo": args, "pid": os.getpid(), "started": started, "ended": time.time(),
            "env": {k: os.environ.get(k) for k in ("MF_MODEL_ARTIFACT", "OMP_NUM_THREADS", "CML_MODEL_DEPLOYMENT_CRN")},
            "cwd": os.getcwd(), "sys_path0": sys.path[0]}
"""

METRICS = """
import cml.metrics_v1 as metrics
import cml.models_v1 as models

@models.cml_model(metrics=True)
def predict(args):
    metrics.track_metric("customer", args["customer"])
    metrics.track_metric("detail", {"offers": [1, 2], "score": 0.5})
    return {"offer": "Discount"}
"""


def _concurrently(*calls, after=None):
    """Run the callables at once, each in a thread; their results in order. ``after`` (a path):
    the later calls start once it exists (the first call creates it when a replica serves it)."""
    results: list = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for i, thread in enumerate(threads):
        thread.start()
        if i == 0 and after is not None:
            deadline = time.monotonic() + 10
            while not after.exists():
                assert time.monotonic() < deadline, "the first call was never served"
                time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    return results


def test_a_deployment_goes_pending_deploying_deployed_and_answers(models):
    path = models.entry_point("probe.py", PROBE)
    model = models.model()
    build = models.wait_build(models.build(model, path))
    created = models.deploy(build, cpu=1.5, memory=1, replicas=1, environment={"MF_MODEL_ARTIFACT": "models/m.skops"})
    assert created["status"] == "pending"
    assert created["crn"] == f"crn:cdp:ml:local:workspace:deployment/{created['id']}"
    assert json.loads(created["environment"]) == {"MF_MODEL_ARTIFACT": "models/m.skops"}
    assert (created["cpu"], created["memory"], created["replicas"], created["nvidia_gpu"]) == (1.5, 1, 1, 0)
    seen = {created["status"]}
    deadline = time.monotonic() + 30
    while (current := models.get_deployment(created))["status"] in DEPLOYING:
        seen.add(current["status"])
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert current["status"] == "deployed", current
    assert seen <= {"pending", "deploying"}

    resp = models.call(model, {"customer": "c-1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["success"] is True
    answer = body["response"]
    assert answer["echo"] == {"customer": "c-1"}
    assert answer["env"] == {"MF_MODEL_ARTIFACT": "models/m.skops", "OMP_NUM_THREADS": "1",
                             "CML_MODEL_DEPLOYMENT_CRN": created["crn"]}
    assert answer["cwd"] == str(models.files_dir) and answer["sys_path0"] == str(models.files_dir)
    # also with the access key in the URL
    url = f"{models.ws.model_service_url}/model?accessKey={model['access_key']}"
    assert httpx.post(url, json={"request": {"q": 1}}, headers=models.ws.headers).json()["response"]["echo"] == {"q": 1}
    listed = models.http.get(models.build_path(build) + "/deployments").json()["model_deployments"]
    assert [d["id"] for d in listed] == [created["id"]]


def test_one_replica_serves_one_call_at_a_time_and_a_busy_model_answers_429(models):
    model, _, _ = models.deployed(PROBE)
    one, two = models.files_dir / "one.started", models.files_dir / "two.started"
    first, second = _concurrently(lambda: models.call(model, {"sleep": 0.6, "mark": one.name}),
                                  lambda: models.call(model, {}), after=one)
    assert first.status_code == second.status_code == 200
    a, b = first.json()["response"], second.json()["response"]
    assert a["pid"] == b["pid"] and b["started"] >= a["ended"]  # the second call waited for the first
    # longer than the busy timeout (1.5 s in these tests): the waiting call is refused
    slow, refused = _concurrently(lambda: models.call(model, {"sleep": 2.5, "mark": two.name}),
                                  lambda: models.call(model, {}), after=two)
    assert slow.status_code == 200
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["success"] is False and body["error"] == "model.busy" and body["code"] == 8
    assert models.call(model, {}).status_code == 200  # free again


def test_two_replicas_serve_two_calls_at_once(models):
    model, _, _ = models.deployed(PROBE, replicas=2)
    first, second = _concurrently(lambda: models.call(model, {"sleep": 0.8}),
                                  lambda: models.call(model, {"sleep": 0.8}))
    a, b = first.json()["response"], second.json()["response"]
    assert a["pid"] != b["pid"]
    assert b["started"] < a["ended"] and a["started"] < b["ended"]  # overlapping


def test_many_concurrent_calls_are_all_answered(models):
    model, _, _ = models.deployed("def predict(args):\n    return args\n", replicas=2)
    failures: list = []

    def client():
        with httpx.Client(headers=models.ws.headers, timeout=30) as http:
            for i in range(60):
                resp = models.call(model, {"i": i}, client=http)
                if resp.status_code != 200 or resp.json()["response"] != {"i": i}:
                    failures.append(resp.text)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []


def test_authentication_is_needed_unless_disabled(models):
    model, _, _ = models.deployed(PROBE)
    missing = models.call(model, {}, auth=False)
    assert missing.status_code == 401 and missing.json()["code"] == 16
    wrong = httpx.post(models.ws.model_service_url + "/model", headers={"Authorization": "Bearer nope"},
                       json={"accessKey": model["access_key"], "request": {}})
    assert wrong.status_code == 401 and wrong.json()["message"] == "invalid API key"
    open_model, _, _ = models.deployed(PROBE, name="open.py", disable_authentication=True)
    assert models.call(open_model, {"x": 1}, auth=False).json()["response"]["echo"] == {"x": 1}


def test_bad_model_service_requests(models):
    model, _, _ = models.deployed(PROBE)
    url = models.ws.model_service_url + "/model"
    headers = {**models.ws.headers, "content-type": "application/json"}

    def post(content: bytes, target: str = url) -> httpx.Response:
        return httpx.post(target, content=content, headers=headers)

    cases = {
        "not json": (post(b"{nope"), 400),
        "an array": (post(b"[1, 2]"), 400),
        "no access key": (post(b'{"request": {}}'), 400),
        "no request": (post(json.dumps({"accessKey": model["access_key"]}).encode()), 400),
        "unknown key": (post(b'{"accessKey": "0000", "request": {}}'), 404),
        "another path": (post(b"{}", models.ws.model_service_url + "/models"), 404),
    }
    for name, (resp, status) in cases.items():
        assert resp.status_code == status, (name, resp.text)
        body = resp.json()
        assert body["success"] is False and set(body) >= {"error", "code", "message", "details"}, name
    assert httpx.get(url).status_code == 405
    # over 5 MB: refused from Content-Length, and when streamed without one
    big = json.dumps({"accessKey": model["access_key"], "request": {"x": "y" * (5 * 1024 * 1024)}}).encode()
    too_large = post(big)
    assert too_large.status_code == 413 and too_large.json()["code"] == 8
    streamed = httpx.post(url, content=iter([big[:1024 * 1024]] * 6), headers=headers)
    assert streamed.status_code == 413
    # just under the limit is fine (and the service carries on)
    fits = json.dumps({"accessKey": model["access_key"], "request": {"x": "y" * (5 * 1024 * 1024 - 200)}})
    assert post(fits.encode()).status_code == 200
    assert models.call(model, {"still": "fine"}).status_code == 200


def test_a_model_without_a_deployment_answers_503(models):
    model = models.model()
    resp = models.call(model, {})
    assert resp.status_code == 503 and resp.json()["error"] == "model.notDeployed"


def test_predict_raising_is_a_500_and_the_replica_carries_on(models):
    model, _, _ = models.deployed(PROBE)
    resp = models.call(model, {"raise": "bad customer"})
    assert resp.status_code == 500
    assert resp.json()["error"] == "model.error" and "ValueError: bad customer" in resp.json()["message"]
    assert models.call(model, {}).status_code == 200


def test_a_replica_that_dies_is_replaced(models):
    model, _, deployment = models.deployed(PROBE)
    before = models.call(model, {}).json()["response"]["pid"]
    died = models.call(model, {"exit": True})
    assert died.status_code == 500 and died.json()["error"] == "model.replicaDied"
    deadline = time.monotonic() + 30
    while (resp := models.call(model, {})).status_code != 200:
        assert resp.status_code == 429 or resp.status_code == 503, resp.text
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert resp.json()["response"]["pid"] != before
    assert models.get_deployment(deployment)["status"] == "deployed"


def test_a_call_longer_than_the_request_timeout_is_504(models):
    model, _, _ = models.deployed(PROBE)
    started = time.monotonic()
    resp = models.call(model, {"sleep": 4})
    assert resp.status_code == 504 and resp.json()["error"] == "model.timeout"
    assert 2.5 < time.monotonic() - started < 4
    deadline = time.monotonic() + 10
    while (again := models.call(model, {})).status_code != 200:  # the replica is free once it answered
        assert again.status_code == 429 and time.monotonic() < deadline
    assert again.json()["response"]["started"] > 0


def test_stop_and_restart(models):
    model, _, deployment = models.deployed(PROBE, replicas=2)
    pids = {models.call(model, {"sleep": 0.3}).json()["response"]["pid"] for _ in range(2)}
    stopping = models.stop_deployment(deployment)
    assert stopping["status"] in {"stopping", "stopped"}
    stopped = models.wait_deployment(deployment, until=frozenset({"stopped"}))
    assert stopped["stopped_at"] and stopped["status_message"] == "stopped"
    assert models.call(model, {}).status_code == 503
    for pid in pids:
        assert not _alive(pid)
    assert models.stop_deployment(deployment)["status"] == "stopped"  # idempotent
    restarted = models.restart_deployment(deployment)
    assert restarted["status"] in {"pending", "deploying", "deployed"}
    assert models.wait_deployment(restarted)["status"] == "deployed"
    answer = models.call(model, {}).json()["response"]
    assert answer["pid"] not in pids
    assert models.get_deployment(deployment)["stopped_at"] is None


def test_a_replica_that_fails_to_load_fails_the_deployment_with_its_message(models):
    code = PROBE + "\ndef build_check():\n    raise RuntimeError(f\"no model file at {os.environ['MF_MODEL_ARTIFACT']}\")\n"
    path = models.entry_point("needs_model.py", code)
    model = models.model()
    build = models.wait_build(models.build(model, path))
    assert build["status"] == "built"  # builds do not call build_check(): the model files are not in a build
    deployment = models.wait_deployment(models.deploy(build, replicas=2, environment={"MF_MODEL_ARTIFACT": "m.skops"}))
    assert deployment["status"] == "failed"
    assert "RuntimeError: no model file at m.skops" in deployment["status_message"]
    assert models.call(model, {}).status_code == 503
    log_dir = models.ws.root / "deployments" / deployment["id"]
    assert "Traceback" in "".join(p.read_text() for p in log_dir.glob("replica-*.log"))


def test_build_check_runs_before_a_replica_is_ready(models):
    code = """
CHECKS = []

def predict(args):
    return {"checks_before": len(CHECKS)}

def build_check():
    CHECKS.append(predict({}))
    return {"ok": True}
"""
    model, _, deployment = models.deployed(code)
    assert models.call(model, {}).json()["response"] == {"checks_before": 1}
    log = (models.ws.root / "deployments" / deployment["id"] / "replica-0.log").read_text()
    assert 'build_check() answered: {"ok":true}' in log


def _shim(ws, code: str) -> object:
    """Run ``code`` with the ``cml`` stand-in in a separate interpreter (this process must not
    import it: other tests resolve ``cml`` themselves); returns what it printed as JSON."""
    env = {**os.environ, "PYTHONPATH": str(SHIM_DIR), "CML_WORKSPACE_URL": ws.url, "CDSW_APIV2_KEY": ws.api_key}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_track_metric_in_predict_then_read_metrics(models):
    model, build, deployment = models.deployed(METRICS)
    since = int(time.time() * 1000)
    first = models.call(model, {"customer": "c-1"}).json()["response"]
    second = models.call(model, {"customer": "c-2"}).json()["response"]
    assert first["prediction"] == {"offer": "Discount"} and first["uuid"] != second["uuid"]
    read = "import json, cml.metrics_v1 as m; print(json.dumps(m.read_metrics({}={!r})))"
    rows = _shim(models.ws, read.format("model_deployment_crn", deployment["crn"]))["metrics"]
    assert [r["predictionUuid"] for r in rows] == [first["uuid"], second["uuid"]]
    row = rows[0]
    assert row["modelDeploymentCrn"] == deployment["crn"]
    assert row["modelBuildCrn"] == build["crn"] and row["modelCrn"] == model["crn"]
    assert since <= row["startTimeStampMs"] <= row["endTimeStampMs"]
    assert row["metrics"] == {"customer": "c-1", "detail": {"offers": [1, 2], "score": 0.5}}
    # ground truth later; an aggregate row; read by model CRN
    _shim(models.ws, (
        "import json, cml.metrics_v1 as m\n"
        f"m.track_delayed_metrics({{'converted': 1}}, {first['uuid']!r})\n"
        f"m.track_aggregate_metrics({{'rate': 0.5}}, 0, 10, model_deployment_crn={deployment['crn']!r})\n"
        "print('null')"))
    rows = _shim(models.ws, read.format("model_crn", model["crn"]))["metrics"]
    assert rows[0] == {**rows[0], "predictionUuid": None, "metrics": {"rate": 0.5}, "startTimeStampMs": 0}
    assert rows[1]["metrics"] == {"customer": "c-1", "detail": {"offers": [1, 2], "score": 0.5}, "converted": 1}
    unknown = models.http.post("/local/model_metrics/track_delayed", json={"prediction_uuid": "nope", "metrics": {}})
    assert unknown.status_code == 404
    assert httpx.post(models.ws.url + "/local/model_metrics/read", json={}).status_code == 401


def test_deployments_come_back_after_a_server_restart(new_workspace, shared_code_dir):
    ws = new_workspace(cpus=2, memory_gb=8, code_dir=shared_code_dir, extra_args=["--kill-grace", "1"])
    with ws.client() as http:
        api = ModelApi(ws, http)
        model, _, deployment = api.deployed(METRICS, replicas=2)
        stopped_model, _, stopped = api.deployed(PROBE, name="probe.py")
        api.stop_deployment(stopped)
        api.wait_deployment(stopped, until=frozenset({"stopped"}))
        uuid = api.call(model, {"customer": "c-1"}).json()["response"]["uuid"]
    ws.restart()
    with ws.client() as http:
        api = ModelApi(ws, http)
        back = api.wait_deployment(deployment)
        assert back["status"] == "deployed", back
        resp = api.call(model, {"customer": "c-2"})
        assert resp.status_code == 200 and resp.json()["response"]["prediction"] == {"offer": "Discount"}
        assert api.get_deployment(stopped)["status"] == "stopped"
        assert api.call(stopped_model, {}).status_code == 503
        rows = http.post("/local/model_metrics/read", json={"model_deployment_crn": deployment["crn"]}).json()
        assert [r["predictionUuid"] for r in rows["metrics"]][0] == uuid and len(rows["metrics"]) == 2


def test_deleting_a_model_ends_its_replicas(models):
    model, _, _ = models.deployed(PROBE)
    pid = models.call(model, {}).json()["response"]["pid"]
    assert models.http.delete(f"{models.models}/{model['id']}").status_code == 200
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "the replica outlived its model"
        time.sleep(0.05)
    assert models.call(model, {}).status_code == 404


@pytest.mark.parametrize("when", ["stopped", "killed"])
def test_replicas_end_with_the_server(new_workspace, shared_code_dir, when):
    ws = new_workspace(cpus=2, memory_gb=8, code_dir=shared_code_dir)
    with ws.client() as http:
        api = ModelApi(ws, http)
        model, _, _ = api.deployed(PROBE)
        pid = api.call(model, {}).json()["response"]["pid"]
    if when == "stopped":
        ws.stop()
    else:
        os.kill(ws.pid, 9)
        ws.stop()
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "the replica outlived the server"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _raw_exchange(port: int, data: bytes, *, expect_responses: int,
                  timeout: float = 10.0) -> list[tuple[int, dict, bytes]]:
    """Send raw bytes to the model service; read ``expect_responses`` HTTP responses."""
    import socket

    responses = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while len(responses) < expect_responses:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(responses)} responses"
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", 0))
            while len(buf) < length:
                buf += sock.recv(65536)
            body, buf = buf[:length], buf[length:]
            if status == 100:
                continue
            responses.append((status, headers, body))
    return responses


def _request(key_body: bytes, api_key: str, *extra: str, version: str = "1.1") -> bytes:
    head = [f"POST /model HTTP/{version}", "Host: x", "Content-Type: application/json",
            f"Authorization: Bearer {api_key}", f"Content-Length: {len(key_body)}", *extra, "", ""]
    return "\r\n".join(head).encode() + key_body


def test_http_details_pipelining_chunked_expect_and_connection_close(models):
    model, _, _ = models.deployed("def predict(args):\n    return args\n")
    port, key = models.ws.model_port, models.ws.api_key

    def body(i: int) -> bytes:
        return json.dumps({"accessKey": model["access_key"], "request": {"i": i}}).encode()

    # three pipelined requests in one write: answered in order
    answers = _raw_exchange(port, b"".join(_request(body(i), key) for i in range(3)), expect_responses=3)
    assert [json.loads(b)["response"]["i"] for _, _, b in answers] == [0, 1, 2]
    # a chunked body
    chunked = body(7)
    data = (f"POST /model HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"{len(chunked[:10]):x}\r\n").encode() + chunked[:10] + f"\r\n{len(chunked[10:]):x}\r\n".encode() \
        + chunked[10:] + b"\r\n0\r\n\r\n"
    (status, _, answer), = _raw_exchange(port, data, expect_responses=1)
    assert status == 200 and json.loads(answer)["response"] == {"i": 7}
    # Expect: 100-continue gets the interim answer, then the real one
    (status, _, answer), = _raw_exchange(port, _request(body(8), key, "Expect: 100-continue"), expect_responses=1)
    assert status == 200 and json.loads(answer)["response"] == {"i": 8}
    # Connection: close and HTTP/1.0 are honoured
    (status, headers, _), = _raw_exchange(port, _request(body(9), key, "Connection: close"), expect_responses=1)
    assert status == 200 and headers["connection"] == "close"
    (status, headers, _), = _raw_exchange(port, _request(body(10), key, version="1.0"), expect_responses=1)
    assert status == 200 and headers.get("connection") == "close"
    (status, _, _), = _raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n", expect_responses=1)
    assert status == 400


def test_head_gets_no_body_and_the_keep_alive_connection_carries_on(models):
    import http.client
    import socket

    model, _, _ = models.deployed("def predict(args):\n    return args\n")
    body = json.dumps({"accessKey": model["access_key"], "request": {"after": "head"}})
    conn = http.client.HTTPConnection("127.0.0.1", models.ws.model_port, timeout=10)
    try:
        conn.request("HEAD", "/model")
        head = conn.getresponse()
        assert head.status == 405 and head.getheader("allow") == "POST"
        assert head.read() == b""
        conn.request("POST", "/model", body=body, headers={**models.ws.headers, "content-type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["response"] == {"after": "head"}
    finally:
        conn.close()
    # http.client drops what it buffered past a HEAD answer: on the raw socket, the next bytes
    # after the HEAD answer's headers must be the POST's status line, not a body
    with socket.create_connection(("127.0.0.1", models.ws.model_port), timeout=10) as sock:
        sock.sendall(b"HEAD /model HTTP/1.1\r\nHost: x\r\n\r\n" + _request(body.encode(), models.ws.api_key))
        data = b""
        while data.count(b"\r\n\r\n") < 2:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    after_head = data.split(b"\r\n\r\n", 1)[1]
    assert after_head.startswith(b"HTTP/1.1 200 "), data


def test_a_body_too_deeply_nested_or_with_a_too_long_integer_is_a_400_naming_it(models):
    model, _, _ = models.deployed("def predict(args):\n    return args\n")
    key = json.dumps(model["access_key"])

    def post(request: str) -> httpx.Response:
        return httpx.post(models.ws.model_service_url + "/model", headers=models.ws.headers,
                          content=f'{{"accessKey": {key}, "request": {request}}}'.encode())

    deep = post("[" * 100_000 + "]" * 100_000)
    assert deep.status_code == 400, deep.text
    message = deep.json()["message"]
    assert "nested too deeply" in message and "recursion" not in message and "Traceback" not in message
    huge = post('{"customers": [{"recency": 6}, {"history": ' + "7" * 5000 + "}]}")
    assert huge.status_code == 400, huge.text
    message = huge.json()["message"]
    assert "request.customers[1].history" in message and "5000 digits" in message, message
    negative = post('{"history": -' + "7" * 5000 + "}")
    assert negative.status_code == 400 and "request.history" in negative.json()["message"], negative.text
    assert models.call(model, {"still": "fine"}).json()["response"] == {"still": "fine"}


def test_auto_deploy_and_health(models):
    path = models.entry_point("probe.py", PROBE)
    model = models.model()
    build = models.wait_build(models.build(model, path, auto_deploy_model=True, auto_deployment_config={
        "cpu": 1, "memory": 1, "replicas": 2, "environment": {"MF_MODEL_ARTIFACT": "auto.skops"}}))
    assert build["status"] == "built"
    deadline = time.monotonic() + 30
    while not (listed := models.http.get(models.build_path(build) + "/deployments").json()["model_deployments"]):
        assert time.monotonic() < deadline, "the build was not deployed"
        time.sleep(0.05)
    deployment = models.wait_deployment(listed[0])
    assert deployment["status"] == "deployed" and deployment["replicas"] == 2
    assert models.call(model, {}).json()["response"]["env"]["MF_MODEL_ARTIFACT"] == "auto.skops"
    health = httpx.get(models.ws.url + "/health").json()
    assert health["model_service_url"] == models.ws.model_service_url
    assert health["replicas_ready"] >= 2 and health["deployments_serving"] >= 1


SLOW_CHECK = PROBE + """
def build_check():
    deadline = time.monotonic() + 30
    while not os.path.exists("release.check") and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"pid": os.getpid()}
"""


def test_stop_and_restart_while_deploying(models):
    path = models.entry_point("slow_check.py", SLOW_CHECK)
    model = models.model()
    build = models.wait_build(models.build(model, path))
    deployment = models.wait_deployment(models.deploy(build), until=frozenset({"deploying"}))
    log = models.ws.root / "deployments" / deployment["id"] / "replica-0.log"
    assert models.stop_deployment(deployment)["status"] == "stopping"
    assert models.wait_deployment(deployment, until=frozenset({"stopped"}))["status"] == "stopped"
    assert models.call(model, {}).status_code == 503
    # restart while deploying, then let it finish: one deployment, serving
    models.restart_deployment(deployment)
    models.wait_deployment(deployment, until=frozenset({"deploying"}))
    models.restart_deployment(deployment)
    (models.files_dir / "release.check").touch()
    assert models.wait_deployment(deployment)["status"] == "deployed"
    assert models.call(model, {}).status_code == 200
    assert log.read_text().count("replica 0 starting") == 3


def test_a_build_under_way_when_the_server_stops_runs_again(new_workspace, shared_code_dir):
    ws = new_workspace(cpus=2, memory_gb=8, code_dir=shared_code_dir)
    with ws.client() as http:
        api = ModelApi(ws, http)
        api.script("cdsw-build.sh", "echo build step\nwhile [ ! -f release.build ]; do sleep 0.05; done\n")
        build = api.build(api.model(), api.entry_point("echo.py", "def predict(args):\n    return args\n"))
        deadline = time.monotonic() + 10
        while api.get_build(build)["status"] != "pushing":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    ws.restart()
    (ws.root / "projects" / ws.project_id / "files" / "release.build").touch()
    with ws.client() as http:
        api = ModelApi(ws, http)
        done = api.wait_build(build)
        assert done["status"] == "built", done
    assert (ws.root / "builds" / f"{build['id']}.log").read_text().count("build step") == 2
