"""A small stateful stand-in for CML's models, builds and deployments API and its model service.

Real HTTP on 127.0.0.1 (``http.server``), in memory, for the deploy operator's tests while the
local workspace has no models API. It follows ``shared/CML_API.md``: paginated lists
(``page_size``, ``page_token``, ``next_page_token``, ``search_filter`` substring match,
``sort=-created_at``), int64 fields as strings, ``:stop`` / ``:restart``, the model service's
``POST /model`` with ``{"accessKey", "request"}`` → ``{"success": true, "response": ...}``.

Statuses advance on each GET of one build or deployment, along ``build_statuses`` /
``deployment_statuses`` (set before the create). ``inject(method, route, status, apply=...)``
makes the next matching call answer an error, after (``apply=True``, like CML's gateway that
answers 500 while the workspace goes on creating) or instead of doing the work.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API_KEY = "fake-api-key-0123456789"
PROJECT = "p1"

_ROUTES = [
    ("models", re.compile(r"^/api/v2/projects/(?P<p>[^/]+)/models$")),
    ("model", re.compile(r"^/api/v2/projects/(?P<p>[^/]+)/models/(?P<m>[^/:]+)$")),
    ("builds", re.compile(r"^/api/v2/projects/(?P<p>[^/]+)/models/(?P<m>[^/]+)/builds$")),
    ("build", re.compile(r"^/api/v2/projects/(?P<p>[^/]+)/models/(?P<m>[^/]+)/builds/(?P<b>[^/:]+)$")),
    (
        "deployments",
        re.compile(r"^/api/v2/projects/(?P<p>[^/]+)/models/(?P<m>[^/]+)/builds/(?P<b>[^/]+)/deployments$"),
    ),
    (
        "deployment",
        re.compile(
            r"^/api/v2/projects/(?P<p>[^/]+)/models/(?P<m>[^/]+)/builds/(?P<b>[^/]+)/deployments/"
            r"(?P<d>[^/:]+)(?P<action>:stop|:restart)?$"
        ),
    ),
    ("model_service", re.compile(r"^(/[^/]+)*/model$")),
]


@dataclass
class Call:
    method: str
    route: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeCml:
    url: str = ""
    models: dict[str, dict] = field(default_factory=dict)
    builds: dict[str, dict] = field(default_factory=dict)
    deployments: dict[str, dict] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    #: statuses a build created next walks through, one step per GET of it
    build_statuses: list[str] = field(default_factory=lambda: ["pending", "pushing", "built"])
    #: statuses a deployment created next walks through, one step per GET of it
    deployment_statuses: list[str] = field(default_factory=lambda: ["pending", "deploying", "deployed"])
    #: what a deployed model answers: ``predict(request) -> response`` (before metrics wrapping)
    predict: Callable[[dict], Any] = lambda request: {"echo": request}
    #: wrap answers as ``{"prediction", "uuid"}`` like ``@cml_model(metrics=True)``
    metrics: bool = False
    #: ``model service`` key expected as Bearer when a model has auth enabled
    model_api_key: str = API_KEY
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _clock: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _injected: list[tuple[str, str, int, bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- set-up helpers ---------------------------------------------------------------------
    def _now(self) -> str:
        n = next(self._clock)
        return f"2026-11-27T10:{n // 60:02d}:{n % 60:02d}.000Z"

    def add_model(self, name: str, *, auth_enabled: bool = True) -> dict:
        mid = f"m{next(self._ids)}"
        model = {
            "id": mid,
            "project_id": PROJECT,
            "name": name,
            "description": "",
            "access_key": f"access-{mid}-secret",
            "crn": f"crn:cdp:ml:model/{mid}",
            "auth_enabled": auth_enabled,
            "created_at": self._now(),
        }
        self.models[mid] = model
        return model

    def add_build(self, model_id: str, *, status: str = "built", comment: str = "") -> dict:
        bid = f"b{next(self._ids)}"
        build = {
            "id": bid,
            "model_id": model_id,
            "status": status,
            "comment": comment,
            "crn": f"crn:cdp:ml:build/{bid}",
            "created_at": self._now(),
            "_statuses": [],
        }
        self.builds[bid] = build
        return build

    def add_deployment(
        self, model_id: str, build_id: str, *, status: str = "deployed", **fields: Any
    ) -> dict:
        did = f"d{next(self._ids)}"
        dep = {
            "id": did,
            "model_id": model_id,
            "build_id": build_id,
            "status": status,
            "crn": f"crn:cdp:ml:deployment/{did}",
            "cpu": fields.get("cpu", 1),
            "memory": fields.get("memory", 2),
            "replicas": str(fields.get("replicas", 1)),
            "created_at": self._now(),
            "stopped_at": None,
            "environment": json.dumps(fields.get("environment") or {}),
            "_statuses": [],
        }
        self.deployments[did] = dep
        return dep

    def inject(self, method: str, route: str, status: int, *, apply: bool = False) -> None:
        """The next ``method`` call of ``route`` answers ``status``; ``apply``: after doing it."""
        self._injected.append((method, route, status, apply))

    # -- queries for assertions -------------------------------------------------------------
    def count(self, method: str, route: str) -> int:
        return sum(1 for c in self.calls if c.method == method and c.route == route)

    def stopped(self) -> set[str]:
        stops = [c.path for c in self.calls if c.path.endswith(":stop")]
        return {path.rsplit("/", 1)[-1].removesuffix(":stop") for path in stops}

    def status(self, deployment_id: str) -> str:
        return self.deployments[deployment_id]["status"]

    # -- the API ----------------------------------------------------------------------------
    @staticmethod
    def _public(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _page(self, items: list[dict], key: str, query: dict[str, str]) -> dict:
        flt = json.loads(query["search_filter"]) if query.get("search_filter") else {}
        items = [i for i in items if all(str(v) in str(i.get(k, "")) for k, v in flt.items())]
        items.sort(key=lambda i: i["created_at"], reverse=query.get("sort") == "-created_at")
        size = int(query.get("page_size") or 10)
        start = int(query.get("page_token") or 0)
        page = items[start : start + size]
        token = str(start + size) if start + size < len(items) else ""
        return {key: [self._public(i) for i in page], "next_page_token": token}

    @staticmethod
    def _advance(obj: dict) -> None:
        if obj["_statuses"]:
            obj["status"] = obj["_statuses"].pop(0)

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any):
        route, match = next(((name, m) for name, rx in _ROUTES if (m := rx.match(path))), (None, None))
        self.calls.append(Call(method, route or "?", path, query, headers, body))
        if route is None:
            return 404, {"error": "not found", "code": 5, "message": f"no route {path}"}
        if route != "model_service" and headers.get("authorization") != f"Bearer {API_KEY}":
            return 401, {"error": "unauthenticated", "code": 16, "message": "invalid API key"}
        injected = next((i for i in self._injected if i[0] == method and i[1] == route), None)
        if injected:
            self._injected.remove(injected)
            if not injected[3]:
                return injected[2], {"error": "injected", "code": 13, "message": f"injected {injected[2]}"}
        status, answer = self._dispatch(method, route, match.groupdict(), query, headers, body)
        if injected:
            return injected[2], {"error": "injected", "code": 13, "message": "gateway timeout (work done)"}
        return status, answer

    def _dispatch(self, method, route, ids, query, headers, body):  # noqa: C901 - a router
        mid, bid, did = ids.get("m"), ids.get("b"), ids.get("d")
        if route == "models":
            if method == "GET":
                return 200, self._page(list(self.models.values()), "models", query)
            model = self.add_model(body["name"], auth_enabled=not body.get("disable_authentication"))
            return 200, self._public(model)
        if mid is not None and mid not in self.models and route != "model_service":
            return 404, {"error": "not found", "code": 5, "message": f"model {mid} not found"}
        if route == "model":
            if method == "DELETE":
                del self.models[mid]
                return 200, {}
            return 200, self._public(self.models[mid])
        if route == "builds":
            if method == "GET":
                mine = [b for b in self.builds.values() if b["model_id"] == mid]
                return 200, self._page(mine, "model_builds", query)
            statuses = list(self.build_statuses)
            build = self.add_build(mid, status=statuses.pop(0), comment=body.get("comment", ""))
            build.update(
                file_path=body.get("file_path"),
                function_name=body.get("function_name"),
                runtime_identifier=body.get("runtime_identifier"),
                _statuses=statuses,
                _request=body,
            )
            return 200, self._public(build)
        if bid is not None and bid not in self.builds:
            return 404, {"error": "not found", "code": 5, "message": f"build {bid} not found"}
        if route == "build":
            self._advance(self.builds[bid])
            return 200, self._public(self.builds[bid])
        if route == "deployments":
            if method == "GET":
                mine = [d for d in self.deployments.values() if d["build_id"] == bid]
                return 200, self._page(mine, "model_deployments", query)
            statuses = list(self.deployment_statuses)
            dep = self.add_deployment(
                mid,
                bid,
                status=statuses.pop(0),
                cpu=body.get("cpu"),
                memory=body.get("memory"),
                replicas=body.get("replicas"),
                environment=body.get("environment"),
            )
            dep["_statuses"] = statuses
            return 200, self._public(dep)
        if route == "deployment":
            if did not in self.deployments:
                return 404, {"error": "not found", "code": 5, "message": f"deployment {did} not found"}
            dep = self.deployments[did]
            if ids.get("action") == ":stop":
                dep.update(status="stopped", stopped_at=self._now(), _statuses=[])
                return 200, {}
            if ids.get("action") == ":restart":
                dep.update(status="deploying", _statuses=["deployed"])
                return 200, {}
            self._advance(dep)
            return 200, self._public(dep)
        if route == "model_service":
            return self._call_model(headers, body)
        return 404, {"message": "unhandled"}  # pragma: no cover

    def _call_model(self, headers, body):
        key = (body or {}).get("accessKey")
        model = next((m for m in self.models.values() if m["access_key"] == key), None)
        if model is None:
            return 404, {"success": False, "message": "unknown access key"}
        if model["auth_enabled"] and headers.get("authorization") != f"Bearer {self.model_api_key}":
            return 401, {"success": False, "message": "unauthorized"}
        serving = [d for d in self.deployments.values() if d["model_id"] == model["id"]]
        if not any(d["status"] == "deployed" for d in serving):
            return 404, {"success": False, "message": "model is not deployed"}
        response = self.predict(body["request"])
        if self.metrics:
            response = {"prediction": response, "uuid": f"uuid-{next(self._ids)}"}
        return 200, {"success": True, "response": response}


@contextmanager
def serve_fake_cml() -> Iterator[FakeCml]:
    fake = FakeCml()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            with fake._lock:
                status, payload = fake.handle(self.command, unquote(parts.path), query, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _handle

        def log_message(self, *args: Any) -> None:
            pass

    httpd.RequestHandlerClass = Handler
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
