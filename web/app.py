"""The Litestar application: routes, JWT auth, RFC 9457 problem details, OpenAPI.

Every error leaves as `application/problem+json`. Validation errors (a wrong type, an
unknown field, a rule of the lead service) are 422 with `errors: [{field, message}]`;
an unexpected exception is logged and answered with a 500 that says nothing internal.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import psycopg
import structlog
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

from dispatcher.leads import Conflict, FieldError, InvalidInput
from dispatcher.runtime import Runtime
from dispatcher.settings import Settings
from web import (
    alert_groups,
    alerts,
    controls,
    dnc,
    health,
    leads,
    metrics,
    numbers,
    templates,
    webhooks,
)
from web.auth import jwt_auth
from web.schemas import field_error

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


def _problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> ProblemDetailsException:
    return ProblemDetailsException(
        type_="about:blank",
        title=HTTPStatus(status).phrase,
        status_code=status,
        detail=detail,
        headers=headers,
        extra=extra or None,
    )


def _errors_json(errors: list[FieldError]) -> list[dict[str, str]]:
    return [{"field": e.field, "message": e.message} for e in errors]


def _from_http(exc: HTTPException) -> ProblemDetailsException:
    return _problem(exc.status_code, exc.detail, headers=exc.headers)


def _from_validation(exc: ValidationException) -> ProblemDetailsException:
    """Litestar's decoding errors, each naming its field (`key`, or in the message)."""
    raw = exc.extra if isinstance(exc.extra, list) else []
    errors = [field_error(str(e.get("message", "")), str(e.get("key", ""))) for e in raw]
    detail = "the request has invalid fields" if errors else exc.detail
    return _problem(422, detail, errors=_errors_json(errors))


def _from_invalid(exc: InvalidInput) -> ProblemDetailsException:
    return _problem(422, "the request has invalid fields", errors=_errors_json(exc.errors))


def _from_conflict(exc: Conflict) -> ProblemDetailsException:
    return _problem(409, str(exc))


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("dependency_unavailable", path=request.url.path, error=type(exc).__name__)
    problem = _problem(
        503, "a backing service is unavailable; retry shortly", headers={"Retry-After": "5"}
    )
    return problem.to_response(request)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled_error", method=request.method, path=request.url.path, exc_info=exc)
    return _problem(500, "an unexpected error occurred; it has been logged").to_response(request)


def _runtime(state: State) -> Runtime:
    return state.runtime


def create_app(runtime: Runtime | None = None, settings: Settings | None = None) -> Litestar:
    """The API. With no `runtime`, one is opened from `settings` on startup and closed on
    shutdown; a runtime passed in (tests, `switchboard up`) stays the caller's to close."""
    settings = runtime.settings if runtime is not None else settings or Settings.load()

    def open_runtime(app: Litestar) -> None:
        app.state.runtime = Runtime.open(settings)

    def close_runtime(app: Litestar) -> None:
        app.state.runtime.close()

    return Litestar(
        route_handlers=[
            leads.LeadController,
            numbers.NumberController,
            templates.TemplateController,
            dnc.DncController,
            controls.ControlController,
            alert_groups.AlertGroupController,
            alerts.AlertController,
            webhooks.receive_callback,
            health.health,
            metrics.MetricsController,
        ],
        state=State({"runtime": runtime}),
        on_startup=[*([open_runtime] if runtime is None else []), health.open_probe],
        on_shutdown=[health.close_probe, *([close_runtime] if runtime is None else [])],
        dependencies={"runtime": Provide(_runtime, sync_to_thread=False)},
        on_app_init=[jwt_auth(settings).on_app_init],
        middleware=[metrics.prometheus_config().middleware],
        plugins=[
            ProblemDetailsPlugin(
                ProblemDetailsConfig(
                    enable_for_all_http_exceptions=True,
                    exception_to_problem_detail_map={
                        HTTPException: _from_http,
                        ValidationException: _from_validation,
                        InvalidInput: _from_invalid,
                        Conflict: _from_conflict,
                    },
                )
            )
        ],
        exception_handlers={Exception: _internal_error, psycopg.OperationalError: _unavailable},
        logging_config=None,  # the process's structlog setup (dispatcher.logs) stays in charge
        openapi_config=OpenAPIConfig(
            title="Switchboard",
            version="0.1.0",
            description="Outbound-call dispatcher: leads, numbers, templates, webhooks.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
    )
