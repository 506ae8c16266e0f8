"""`switchboard shadow on|off|status`: switch the shadow ZSET schedule, globally or for one
reseller, and see what it is doing. Every process follows a switch within a second.

Imports stay light (no Redis client, no Prometheus at import): `dispatcher.cli` loads
this module before `switchboard worker` forks.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from dispatcher.settings import Settings

shadow_app = typer.Typer(
    help="Shadow mode: run the seed's Redis ZSET schedule beside the real one, dialing nobody.",
    no_args_is_help=True,
)

ResellerOpt = Annotated[
    str | None, typer.Option("--reseller", help="one reseller (default: every reseller)")
]
DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="env DATABASE_URL")]


def _switch(enabled: bool, reseller: str | None, database_url: str | None) -> None:
    from db.pool import connect
    from dispatcher import shadow_flags

    settings = Settings.load(database_url=database_url)
    if not settings.database_url:
        raise typer.BadParameter("DATABASE_URL is not set")
    scope = reseller if reseller is not None else shadow_flags.GLOBAL
    if scope == "":
        raise typer.BadParameter("--reseller must not be empty")
    with connect(settings.database_url) as conn:
        shadow_flags.set_flag(conn, scope, enabled)
        conn.commit()
    what = "every reseller" if scope == shadow_flags.GLOBAL else f"reseller {scope}"
    typer.echo(f"shadow {'on' if enabled else 'off'} for {what}")


@shadow_app.command("on")
def on(reseller: ResellerOpt = None, database_url: DatabaseOpt = None) -> None:
    """Shadow every reseller, or one (a reseller's own flag beats the global one)."""
    _switch(True, reseller, database_url)


@shadow_app.command("off")
def off(reseller: ResellerOpt = None, database_url: DatabaseOpt = None) -> None:
    """Stop shadowing every reseller, or keep one out while the global flag is on."""
    _switch(False, reseller, database_url)


@shadow_app.command("status")
def status(
    database_url: DatabaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """The flags, the shadow's Redis layout (sizes, promoter holder) and the last hour's
    observations and events."""
    from db.pool import connect
    from dispatcher import shadow_flags

    settings = Settings.load(database_url=database_url)
    if not settings.database_url:
        raise typer.BadParameter("DATABASE_URL is not set")
    with connect(settings.database_url, autocommit=True) as conn:
        flags = shadow_flags.rows(conn)
        observations = conn.execute(
            "SELECT path, count(*) AS n FROM parity_observations"
            " WHERE observed_at > now() - interval '1 hour' GROUP BY path ORDER BY path"
        ).fetchall()
        events = conn.execute(
            "SELECT kind, count(*) AS n FROM shadow_events"
            " WHERE at > now() - interval '1 hour' GROUP BY kind ORDER BY kind"
        ).fetchall()
    out: dict[str, Any] = {
        "flags": [{**f, "updated_at": f["updated_at"].isoformat()} for f in flags],
        "last_hour": {
            "observations": {r["path"]: r["n"] for r in observations},
            "events": {r["kind"]: r["n"] for r in events},
        },
        "redis": _redis_status(settings),
    }
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    if not flags:
        typer.echo("shadow: off (no flags set)")
    for f in out["flags"]:
        scope = "global" if f["scope"] == shadow_flags.GLOBAL else f"reseller {f['scope']}"
        typer.echo(f"{scope}: {'on' if f['enabled'] else 'off'} (since {f['updated_at']})")
    typer.echo(f"redis: {json.dumps(out['redis'])}")
    typer.echo(f"last hour: {json.dumps(out['last_hour'])}")


def _redis_status(settings: Settings) -> dict[str, Any]:
    if not settings.redis_url:
        return {"error": "REDIS_URL is not set"}
    from dispatcher.shadow import keys_for, redis_client

    keys = keys_for(settings)
    client = redis_client(settings.redis_url, 2.0)
    try:
        holder = client.get(keys.lock)
        return {
            "scheduled": client.zcard(keys.schedule),
            "ready": sum(int(client.llen(k)) for k in keys.ready_all),
            "promoter": holder.decode() if holder else None,
        }
    except Exception as exc:  # status must print even with Redis down
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()
