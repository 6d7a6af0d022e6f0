"""The dashboards' page layout: a header, a fixed-width sidebar and a main column — a
template's layout without its resources (no FAST or MathJax bundles, no web fonts), so the
first rows appear sooner. Shared by every app in this folder."""

from __future__ import annotations

import panel as pn
from panel.io.resources import get_dist_path

_HEADER_CSS = """
:host { background: #0072b5; color: white; }
.mf-title { font-size: 1.35em; font-weight: 600; padding: 10px 16px; display: block; }
"""

#: The ``configuration`` of every Tabulator here. Their pages are short (at most 200 rows), and
#: Tabulator's default virtual renderer measures rows one at a time, each a forced layout, on
#: every redraw; the basic renderer lays a page out once, so the first rows appear sooner.
TABLE_CONFIGURATION = {"renderVertical": "basic"}


def shown_or_hidden(shown: bool) -> dict[str, str]:
    """The ``styles`` of a layout holding a Tabulator that the page sometimes hides. Hidden
    with ``visible=False`` (``display: none``; the table's own or a parent's), Tabulator draws
    none of the rows that arrive meanwhile and the table stays blank once shown again; hidden
    by style it keeps its layout."""
    if shown:
        return {"visibility": "visible", "height": "auto", "overflow": "visible"}
    return {"visibility": "hidden", "height": "0px", "overflow": "hidden"}


_RULE_CSS = "hr { border: none; border-top: 1px solid #d0d0d0; margin: 0; }"


def page(title: str, sidebar: list, main: list, sidebar_width: int) -> pn.Column:
    """The page of one session: ``title`` in the header, ``sidebar`` beside ``main``."""
    _local_stylesheets()
    header = pn.pane.HTML(f'<span class="mf-title">{title}</span>', sizing_mode="stretch_width",
                          stylesheets=[_HEADER_CSS], margin=0, css_classes=["mf-header"])
    body = pn.Row(
        pn.Column(*sidebar, width=sidebar_width, css_classes=["mf-sidebar"]),
        pn.Column(*main, sizing_mode="stretch_width", css_classes=["mf-main"]),
        sizing_mode="stretch_width",
    )
    return pn.Column(header, body, sizing_mode="stretch_width", margin=0)


def rule() -> pn.pane.HTML:
    """A horizontal rule. ``pn.layout.Divider`` builds its model without the stylesheet
    patching every other component gets, so behind a reused page it would fetch its CSS from
    Panel's CDN (see :func:`_local_stylesheets`)."""
    return pn.pane.HTML("<hr>", sizing_mode="stretch_width", margin=(5, 10), stylesheets=[_RULE_CSS])


def _local_stylesheets() -> None:
    """Components take their stylesheets' base URL from the document's ``dist_url``, which Panel
    sets when it renders the document's HTML; a session built behind a reused page
    (``--reuse-sessions``, :mod:`dashboards.serve_setup`) never gets one and would fetch them
    from Panel's CDN, a request that cannot succeed on a machine without internet."""
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:  # served, not a notebook or test
        doc.template_variables.setdefault("dist_url", get_dist_path())
