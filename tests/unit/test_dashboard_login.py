"""The dashboards' login (dashboards/login.py): the throttle's arithmetic and the sessions, on a
clock the test moves. The server's answers are in tests/browser/test_experiments_dashboard.py."""

from __future__ import annotations

from dashboards.login import USERS_ENV, Sessions, Throttle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_lock_starts_at_the_limit_doubles_and_ends():
    clock = Clock()
    throttle = Throttle(limit=3, base_s=30, max_s=100, forget_s=900, clock=clock)
    for _ in range(2):
        throttle.failed("alice")
    assert throttle.wait_s("alice") == 0
    throttle.failed("alice")
    assert throttle.wait_s("alice") == 30 and throttle.wait_s("bob") == 0
    clock.now += 29
    assert throttle.wait_s("alice") == 1
    clock.now += 1
    assert throttle.wait_s("alice") == 0
    throttle.failed("alice")  # one more failure after the lock: twice as long
    assert throttle.wait_s("alice") == 60
    throttle.failed("alice")
    throttle.failed("alice")
    assert throttle.wait_s("alice") == 100  # capped
    throttle.succeeded("alice")
    assert throttle.wait_s("alice") == 0


def test_old_failures_are_forgotten():
    clock = Clock()
    throttle = Throttle(limit=2, base_s=30, forget_s=600, clock=clock)
    throttle.failed("alice")
    clock.now += 601
    throttle.failed("bob")  # any failure sweeps the keys quiet for longer than forget_s
    throttle.failed("alice")
    assert throttle.wait_s("alice") == 0


def test_a_closed_session_names_nobody():
    sessions = Sessions()
    first, second = sessions.open("alice"), sessions.open("alice")
    assert first != second and sessions.user_of(first) == sessions.user_of(second) == "alice"
    sessions.close(first)
    assert sessions.user_of(first) is None and sessions.user_of(second) == "alice"
    assert sessions.user_of("made-up") is None


def test_the_stack_names_the_credentials_file_as_the_login_reads_it():
    from stack.dashboard import USERS_ENV as STACK_USERS_ENV

    assert STACK_USERS_ENV == USERS_ENV


def test_bokeh_loads_it_as_panel_serve_auth_module():
    from bokeh.server.auth_provider import AuthModule
    from stack.dashboard import LOGIN

    provider = AuthModule(LOGIN)  # executed from its path, outside sys.modules
    assert (provider.login_url, provider.logout_url) == ("/login", "/logout")
    assert provider.login_handler.__name__ == "LoginHandler" and provider.get_user is not None
