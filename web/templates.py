"""Template routes: any caller may read the call policies; only admins write them."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from dispatcher import templates
from dispatcher.runtime import Runtime
from web.auth import ROLES, require_roles
from web.schemas import TemplateIn, to_item


class TemplateController(Controller):
    path = "/v1/templates"
    tags = ["templates"]
    guards = [require_roles(*ROLES)]

    @put(
        "/{name:str}",
        sync_to_thread=True,
        guards=[require_roles("admin")],
        summary="Create or replace a template",
    )
    def put_template(
        self, name: FromPath[str], data: JSONBody[TemplateIn], runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        with runtime.pool.connection() as conn, conn.transaction():
            row, _ = templates.put(conn, name, to_item(data))
        return templates.template_json(row)

    @get(sync_to_thread=True, summary="List templates")
    def list_templates(self, runtime: NamedDependency[Runtime]) -> dict[str, Any]:
        with runtime.pool.connection() as conn, conn.transaction():
            rows = templates.list_all(conn)
        return {"items": [templates.template_json(r) for r in rows]}

    @get("/{name:str}", sync_to_thread=True, summary="Read a template")
    def read_template(
        self, name: FromPath[str], runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        with runtime.pool.connection() as conn, conn.transaction():
            row = templates.get(conn, name)
        if row is None:
            raise NotFoundException(f"no template {name!r}")
        return templates.template_json(row)
