"""A running Switchboard (API, scheduler, two workers, simulator) per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import System, e2e_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def system(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    log_dir: Path = tmp_path_factory.mktemp("e2e-logs")
    sys_ = System(e2e_settings(database_url, redis_url), log_dir)
    sys_.start("simulator", "simulator")
    sys_.start("api", "api")
    sys_.start("scheduler", "scheduler")
    sys_.start("worker-1", "worker", "--processes", "1")
    sys_.start("worker-2", "worker", "--processes", "1")
    try:
        sys_.wait_ready()
        yield sys_
    finally:
        sys_.stop_all()
