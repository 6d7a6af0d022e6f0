"""HTTP routes, one module per API v2 resource family. Each exposes ``router`` (mounted
under ``/api/v2`` behind bearer auth by :func:`cml_workspace.app.create_app`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Query, Request

from ..listing import apply_list_query, parse_list_query
from ..workspace import Workspace


def get_workspace(request: Request) -> Workspace:
    return request.app.state.workspace


class ListParams:
    """The query parameters every list endpoint takes."""

    def __init__(
        self,
        page_size: int | None = Query(None, description="default 10"),
        page_token: str | None = Query(None),
        search_filter: str | None = Query(None, description='JSON object, e.g. {"name":"x"}'),
        sort: str | None = Query(None, description="e.g. -created_at"),
    ):
        self.query = parse_list_query(page_size, page_token, search_filter, sort)

    def respond(self, key: str, items: list[dict], fields: Iterable[str]) -> dict:
        page, token = apply_list_query(items, self.query, fields)
        return {key: page, "next_page_token": token}


#: ``ws: WorkspaceDep`` in a route gives the app's :class:`Workspace`.
WorkspaceDep = Annotated[Workspace, Depends(get_workspace)]
#: ``params: ListDep`` in a list route parses page_size / page_token / search_filter / sort.
ListDep = Annotated[ListParams, Depends()]
