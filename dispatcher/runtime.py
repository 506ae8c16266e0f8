"""The connections one process shares: database pool, Redis, channel slots, providers.

Opened once per process (API, scheduler, worker) from the settings; tests build one
with in-memory fakes in place of the providers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from psycopg_pool import ConnectionPool

from db.pool import open_pool
from dispatcher.channels import Channels
from dispatcher.settings import Settings
from dispatcher.telephony.base import Provider


@dataclass
class Runtime:
    settings: Settings
    pool: ConnectionPool
    redis: redis.Redis
    channels: Channels
    providers: dict[str, Provider] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, providers: dict[str, Provider] | None = None) -> Runtime:
        if not settings.database_url or not settings.redis_url:
            raise RuntimeError("DATABASE_URL and REDIS_URL must be set (or use `switchboard up`)")
        pool = open_pool(settings.database_url, max_size=settings.db_pool_size)
        client = redis.Redis.from_url(settings.redis_url)
        channels = Channels(
            client,
            settings.redis_prefix,
            lease_s=settings.max_call_s + settings.call_grace_s,
            grace_s=settings.call_grace_s,
        )
        rt = cls(
            settings,
            pool,
            client,
            channels,
            providers if providers is not None else default_providers(settings),
        )
        from dispatcher import shadow  # the shadow ZSET schedule's mirror, once per process

        shadow.install(rt)
        return rt

    def provider(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise LookupError(f"no provider named {name!r} is configured") from None

    def close(self) -> None:
        from dispatcher import shadow

        shadow.uninstall(self)
        for provider in self.providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                close()
        self.pool.close()
        self.redis.close()


def default_providers(settings: Settings) -> dict[str, Provider]:
    """The simulator always; Twilio when its credentials are set; the benchmark's instant
    provider only when asked for."""
    from dispatcher.telephony.simulator import SimulatorProvider

    providers: dict[str, Provider] = {
        "simulator": SimulatorProvider(
            settings.simulator_url, settings.webhook_secret, settings.provider_timeout_s
        )
    }
    if settings.twilio_account_sid and settings.twilio_auth_token:
        from dispatcher.telephony.twilio import TwilioProvider

        providers["twilio"] = TwilioProvider(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            timeout_s=settings.provider_timeout_s,
        )
    if settings.instant_provider:
        from dispatcher.telephony.instant import NAME, InstantProvider

        providers[NAME] = InstantProvider(settings)
    return providers
