"""The dashboards' page layout: a header, a fixed-width sidebar and a main column — a
template's layout without its resources (no FAST or MathJax bundles, no web fonts), so the
first rows appear sooner. Shared by every app in this folder."""

from __future__ import annotations

import panel as pn

_HEADER_CSS = """
:host { background: #0072b5; color: white; }
.mf-title { font-size: 1.35em; font-weight: 600; padding: 10px 16px; display: block; }
"""


def page(title: str, sidebar: list, main: list, sidebar_width: int) -> pn.Column:
    """The page of one session: ``title`` in the header, ``sidebar`` beside ``main``."""
    header = pn.pane.HTML(f'<span class="mf-title">{title}</span>', sizing_mode="stretch_width",
                          stylesheets=[_HEADER_CSS], margin=0, css_classes=["mf-header"])
    body = pn.Row(
        pn.Column(*sidebar, width=sidebar_width, css_classes=["mf-sidebar"]),
        pn.Column(*main, sizing_mode="stretch_width", css_classes=["mf-main"]),
        sizing_mode="stretch_width",
    )
    return pn.Column(header, body, sizing_mode="stretch_width", margin=0)
