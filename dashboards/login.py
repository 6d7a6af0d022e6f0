"""The dashboards' sign-in: ``panel serve --auth-module dashboards/login.py`` (:mod:`stack.dashboard`).

Panel's login page and ``user`` cookie (so ``pn.state.user`` is the signed-in user, see
:mod:`dashboards.auth`), plus what Panel's ``--basic-auth`` lacks:

- **Logout ends the session.** Each sign-in opens a server-side session whose id travels in a
  second signed cookie; a page or websocket needs both cookies and a session that is still open.
  ``/logout`` closes it, so cookies captured before the logout no longer open anything. Sessions
  live in the server process (``--num-procs 1``): a restart signs everybody out.
- **Failed sign-ins are throttled**, per user name and per client address: past
  :data:`BY_USER`'s (or :data:`BY_ADDRESS`'s) limit the login answers HTTP 429 "too many failed
  sign-ins for <user>; try again in N s", for a time that doubles with each further failure.
  While locked, even the right password is refused, so guessing learns nothing.

The credentials file ``{"<user>": "<password>"}`` is named by ``$MODEL_FACTORY_DASHBOARD_USERS``
and re-read at each sign-in (a reviewer added to it can sign in at once).
"""

from __future__ import annotations

import hmac
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Callable

from panel.auth import BasicLoginHandler
from panel.auth import LogoutHandler as PanelLogoutHandler
from panel.config import config
from panel.io.resources import CDN_DIST

USERS_ENV = "MODEL_FACTORY_DASHBOARD_USERS"
SESSION_COOKIE = "mf_session"

login_url = "/login"
logout_url = "/logout"


class _Failures:
    # Not a dataclass: Bokeh executes an auth module without registering it in sys.modules,
    # where dataclasses looks the module up.
    __slots__ = ("count", "last")

    def __init__(self, count: int, last: float):
        self.count, self.last = count, last


class Throttle:
    """Failed sign-ins per key (a user name, an address). From the ``limit``-th on, the key waits
    ``base_s`` after its last failure, doubled with each further one, at most ``max_s``; a key
    that has not failed for ``forget_s`` (and is not locked) starts afresh."""

    def __init__(self, limit: int, base_s: float = 30.0, max_s: float = 900.0, forget_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.base_s, self.max_s, self.forget_s, self.clock = limit, base_s, max_s, forget_s, clock
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def _lock_s(self, failures: _Failures) -> float:
        if failures.count < self.limit:
            return 0.0
        return min(self.max_s, self.base_s * 2 ** (failures.count - self.limit))

    def wait_s(self, key: str) -> float:
        """Seconds before ``key`` may try again (0: now)."""
        with self._lock:
            failures = self._failures.get(key)
            if failures is None:
                return 0.0
            return max(0.0, failures.last + self._lock_s(failures) - self.clock())

    def failed(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            # Forget keys quiet for long enough, so guessed names cannot grow this without bound.
            for old in [k for k, f in self._failures.items() if now - f.last > max(self.forget_s, self._lock_s(f))]:
                del self._failures[old]
            failures = self._failures.setdefault(key, _Failures(0, now))
            failures.count, failures.last = failures.count + 1, now

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class Sessions:
    """The open sign-in sessions: id -> (user, opened at)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._open: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, user: str) -> str:
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        max_age = config.oauth_expiry * 86400
        with self._lock:
            for old in [s for s, (_, at) in self._open.items() if now - at > max_age]:
                del self._open[old]
            self._open[sid] = (user, now)
        return sid

    def user_of(self, sid: str) -> str | None:
        with self._lock:
            entry = self._open.get(sid)
        return entry[0] if entry else None

    def close(self, sid: str) -> None:
        with self._lock:
            self._open.pop(sid, None)


BY_USER = Throttle(limit=5)
#: higher: reviewers behind one proxy share an address
BY_ADDRESS = Throttle(limit=20)
SESSIONS = Sessions()


def _cookie(handler, name: str) -> str | None:
    value = handler.get_secure_cookie(name, max_age_days=config.oauth_expiry)
    return value.decode("utf-8") if value else None


def get_user(request_handler) -> str | None:
    """The user of a request: its ``user`` cookie, if its session is still open."""
    user, sid = _cookie(request_handler, "user"), _cookie(request_handler, SESSION_COOKIE)
    if not user or not sid or SESSIONS.user_of(sid) != user:
        return None
    return user


def _password_matches(username: str, password: str) -> bool:
    path = os.environ.get(USERS_ENV)
    if not path:
        raise RuntimeError(f"${USERS_ENV} must name the dashboard credentials file")
    with open(path, encoding="utf-8") as handle:
        users = json.load(handle)
    expected = users.get(username) if isinstance(users, dict) else None
    # compared in constant time, and against something even for an unknown user
    return hmac.compare_digest(str(expected or "\0").encode(), password.encode()) and expected is not None


class LoginHandler(BasicLoginHandler):
    """Panel's login page and form; the sign-in throttled and opening a server-side session."""

    def post(self):
        by_user = BY_USER.wait_s(self.get_argument("username", ""))
        by_address = BY_ADDRESS.wait_s(self.request.remote_ip or "")
        if not (by_user or by_address):
            super().post()  # checks the password with _validate, then set_current_user
            return
        who = f"for {self.get_argument('username', '')}" if by_user >= by_address else f"from {self.request.remote_ip}"
        wait = math.ceil(max(by_user, by_address))
        self.set_status(429)
        self.set_header("Retry-After", str(wait))
        self.write(self._login_template.render(
            login_endpoint=self._login_endpoint, PANEL_CDN=CDN_DIST,
            errormessage=f"Too many failed sign-ins {who}; try again in {wait} s."))

    def _validate(self, username, password):
        matches = _password_matches(username, password)
        for throttle, key in ((BY_USER, username), (BY_ADDRESS, self.request.remote_ip or "")):
            (throttle.succeeded if matches else throttle.failed)(key)
        return matches

    def set_current_user(self, user):
        super().set_current_user(user)
        if user:
            self.set_secure_cookie(SESSION_COOKIE, SESSIONS.open(user), expires_days=config.oauth_expiry,
                                   httponly=True, path=config.cookie_path)


class LogoutHandler(PanelLogoutHandler):
    """Close the session the request's cookie names, then Panel's logout (cookies cleared)."""

    def get(self):
        sid = _cookie(self, SESSION_COOKIE)
        if sid:
            SESSIONS.close(sid)
        self.clear_cookie(SESSION_COOKIE, path=config.cookie_path)
        super().get()
