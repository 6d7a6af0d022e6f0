"""Who is signed in to this browser session.

The dashboard is served behind a login (``panel serve --auth-module dashboards/login.py
--cookie-secret ...``, or an OAuth provider): the server refuses pages and websockets without a
signed session cookie of an open session, and ``pn.state.user`` is the user that cookie names. The reviewer of a
promotion is that user, never a name typed into the page.
"""

from __future__ import annotations

import panel as pn

#: Panel's logout endpoint (``panel serve --logout-endpoint``, default ``/logout``)
LOGOUT_URL = "/logout"


def current_user() -> str:
    """The authenticated user of the current session, or "" when there is none.

    Empty outside a served session, when the server runs without authentication (no cookie
    secret: ``pn.state.user`` cannot verify a cookie), and for Panel's "guest" sessions: a
    guest cookie is set by the client and proves no identity.
    """
    user = pn.state.user
    if not user or pn.state.cookies.get("is_guest"):
        return ""
    return str(user).strip()
