"""A runtime and an API test client per module, over the module's own database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from web.app import create_app


@pytest.fixture(scope="module")
def runtime(database_url: str, redis_url: str) -> Iterator[Runtime]:
    rt = Runtime.open(
        Settings.load({}, database_url=database_url, redis_url=redis_url), providers={}
    )
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(runtime)) as c:
        yield c
