"""What every dashboard here shows the same way: user text as plain text, the signed-in user,
and the page of a session nobody is signed in to."""

from __future__ import annotations

import html
import re

import panel as pn
import param
from panel.viewable import Viewer

from dashboards.auth import LOGOUT_URL, current_user


def plain(text: object, quote: bool = False) -> str:
    """Text from a user, a table or a login shown as text: no HTML, no Markdown markup.

    With ``quote`` the quotation marks are written as entities as well (the experiments
    dashboard's text); they still show as themselves.
    """
    escaped = html.escape(str(text), quote=quote)
    # Not the "#" of an entity just written (``&#x27;``): escaped, it would show as text.
    return re.sub(r"(?<!&)([\\`*_{}\[\]()#+!|~>-])", r"\\\1", escaped)


class SignedInUser(Viewer):
    """Who this session belongs to, and the way out."""

    identify = param.Callable(default=current_user, doc="Returns the session's signed-in user ('' if none).")
    quote = param.Boolean(default=False, doc="Escape quotation marks in the name too (see :func:`plain`).")

    def __panel__(self):
        user = self.identify()
        if not user:
            return pn.pane.Markdown("**Not signed in**", css_classes=["mf-user"])
        return pn.pane.Markdown(f"Signed in as **{plain(user, quote=self.quote)}** · [Log out]({LOGOUT_URL})",
                                css_classes=["mf-user"])


def refusal():
    """The whole page for a session nobody is signed in to."""
    return pn.pane.Alert(
        "**This dashboard needs a signed-in user.** Serve it with authentication: "
        "`python -m stack dashboard` (`make dashboard`), or `panel serve` with `--auth-module dashboards/login.py` "
        "or an OAuth provider and a `--cookie-secret`.",
        alert_type="danger", css_classes=["mf-not-signed-in"],
    )
