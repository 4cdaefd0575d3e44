"""The Starlette application: pages, the JSON API, actions, the stream and /metrics.

Handlers read the store directly on the event loop (SQLite reads in WAL mode take well under a
millisecond and never wait for the writer); actions, which write, run in a worker thread. The
keeper's threads do the real work; the dashboard only looks and asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

import anyio
from jinja2 import Environment, PackageLoader, TemplateNotFound
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from watchkeeper.alerts import Severity
from watchkeeper.bind import Bind
from watchkeeper.fleetview import agent_docs, runners
from watchkeeper.quantities import format_duration, iso_utc, parse_duration, parse_since
from watchkeeper.store import Store
from watchkeeper.supervisor import watcher_health
from watchkeeper.watchers.base import WatcherConfig
from watchkeeper.web.auth import LOOPBACK_HOSTS, AuthMiddleware, Guard, SecurityHeadersMiddleware
from watchkeeper.web.data import (
    DAY,
    AlertQuery,
    alerts_per_watcher,
    checkpoint_json,
    find_alerts,
    first_alert_since,
    last_alert_id,
    notifier_docs,
    watcher_doc,
    watcher_docs,
    watcher_names,
)
from watchkeeper.web.details import has_view, watcher_detail
from watchkeeper.web.limits import BodyLimitMiddleware, LoginLimiter
from watchkeeper.web.metrics import metrics_registry, render
from watchkeeper.web.stream import Broadcaster, StreamFilter, alert_events

if TYPE_CHECKING:
    from watchkeeper.keeper import Keeper

STATIC = Path(__file__).parent / "static"
POLL = 1.0
"""Seconds between looks at the watchers table for state changes to push."""
PAGE_SIZE = 50
SINCE_CHOICES = ["1h", "24h", "7d", "30d"]
ACTIONS = ("check", "pause", "resume", "mute")


@dataclass
class Context:
    """What every handler needs, kept on ``app.state.wk``."""

    keeper: Keeper
    store: Store
    guard: Guard
    broadcaster: Broadcaster
    env: Environment
    logins: LoginLimiter


SQLITE_MAX = 2**63 - 1
"""The largest integer SQLite stores: larger ids in a query are a 400, not a 500."""


def build_app(keeper: Keeper, store: Store, token: str | None, bind: Bind) -> Starlette:
    """The ASGI app for a started keeper, served at ``bind``."""
    guard = Guard(token)
    broadcaster = Broadcaster()
    keeper.subscribe(broadcaster.publish_alerts)
    env = Environment(loader=PackageLoader("watchkeeper.web", "templates"), autoescape=True)
    env.filters["rel"] = relative_time
    env.filters["duration"] = format_duration
    ctx = Context(keeper, store, guard, broadcaster, env, LoginLimiter())
    registry = metrics_registry(
        store, lambda: broadcaster.count, keeper.health, lambda: agent_docs(store, keeper.lease)
    )

    async def metrics(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(render, registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def login_page(request: Request) -> Response:
        here = request.url.path
        target = request.query_params.get("next") if here == "/login" else here
        return page(request, "login.html", anonymous=True, next=safe_next(target))

    middleware = [Middleware(SecurityHeadersMiddleware), Middleware(BodyLimitMiddleware)]
    if token is None:  # then loopback only: answer only to loopback names (DNS rebinding)
        hosts = [*LOOPBACK_HOSTS, bind.host, f"[{bind.host}]"]
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    middleware.append(Middleware(AuthMiddleware, guard=guard, login_page=login_page))
    routes = [
        Route("/", overview),
        Route("/alerts", alerts_page),
        Route("/watchers/{name:str}", watcher_page),
        Route("/notifiers", notifiers_page),
        Route("/watchers/{name:str}/{action:str}", action, methods=["POST"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/watchers", api_watchers),
        Route("/api/watchers/{name:str}", api_watcher),
        Route("/api/watchers/{name:str}/{action:str}", action, methods=["POST"]),
        Route("/api/alerts", api_alerts),
        Route("/api/notifiers", api_notifiers),
        Route("/api/agents", api_agents),
        Route("/api/health", api_health),
        Route("/api/stream", stream),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        changed = asyncio.Event()
        store.listen(functools.partial(_heard, asyncio.get_running_loop(), changed))
        task = asyncio.create_task(push_changes(ctx, changed))
        try:
            yield
        finally:
            task.cancel()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.wk = ctx
    return app


def fleet_view(ctx: Context) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The agents on this store and {watcher: the agent running it} (see watchkeeper.fleet)."""
    agents = agent_docs(ctx.store, ctx.keeper.lease)
    return agents, runners(ctx.store, agents)


def all_watchers(ctx: Context) -> list[dict[str, Any]]:
    """Every watcher's row, with its thread's trouble and the agent that runs it."""
    return watcher_docs(ctx.store, threads(ctx), fleet_view(ctx)[1])


def threads(ctx: Context) -> dict[str, tuple[str, str | None]]:
    """{watcher: (state, error)} for watchers whose thread crashed or is restarting."""
    return watcher_health(ctx.keeper.health())


def wk(request: Request) -> Context:
    """The dashboard's context."""
    ctx: Context = request.app.state.wk
    return ctx


def running_names(ctx: Context) -> set[str]:
    """Watchers this agent runs (the store may also know some from an older config)."""
    return {w.name for w in ctx.keeper.watchers}


def running_config(ctx: Context, name: str) -> WatcherConfig | None:
    """The config of a watcher this agent runs (what the detail views name: paths, URL, host)."""
    return next((w.config for w in ctx.keeper.watchers if w.name == name), None)


def page(
    request: Request, template: str, status: int = 200, anonymous: bool = False, **values: Any
) -> HTMLResponse:
    """Render a page with what every page needs (CSRF token, login state, the current path).

    ``anonymous``: the viewer has not logged in (the login page), so it gets no CSRF token.
    """
    ctx = wk(request)
    values.setdefault("cursor", 0)
    html = ctx.env.get_template(template).render(
        csrf="" if anonymous else ctx.guard.csrf,
        anonymous=anonymous,
        login=ctx.guard.token is not None and not anonymous,
        path=request.url.path,
        **values,
    )
    return HTMLResponse(html, status_code=status)


def _heard(loop: asyncio.AbstractEventLoop, changed: asyncio.Event, payload: str) -> None:
    """A change notice from the store (another agent's alerts, on PostgreSQL): look at once."""
    if payload == "alerts":
        with contextlib.suppress(RuntimeError):  # the loop has ended: the server stopped
            loop.call_soon_threadsafe(changed.set)


async def push_changes(ctx: Context, changed: asyncio.Event) -> None:
    """Push watcher rows that changed, and wake clients for alerts made by other processes:
    every :data:`POLL`, and at once when the store announces alerts (another agent's)."""
    seen: dict[str, dict[str, Any]] = {}
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), POLL)
        changed.clear()
        if not ctx.broadcaster.count:  # nobody is looking: nothing to read
            seen.clear()
            continue
        try:
            docs = all_watchers(ctx)
            newest = last_alert_id(ctx.store)
        except Exception:  # the store is closing; the task is about to be cancelled
            continue
        for doc in docs:
            if seen.get(doc["name"]) != doc:
                seen[doc["name"]] = doc
                ctx.broadcaster.publish(doc)
        if newest > ctx.broadcaster.newest:
            ctx.broadcaster.wake(newest)


# -- pages ------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    """Every watcher with its state, and the latest alerts (live)."""
    store = wk(request).store
    cursor = last_alert_id(store)
    recent = find_alerts(store, AlertQuery(limit=10))
    agents, running = fleet_view(wk(request))
    return page(
        request,
        "overview.html",
        cursor=cursor,
        watchers=watcher_docs(store, threads(wk(request)), running),
        agents=agents if store.fleet_capable else [],
        alerts=recent,
        running=running_names(wk(request)),
        loaded_at=iso_utc(wk(request).keeper.loaded_at),
    )


async def alerts_page(request: Request) -> Response:
    """The alert history: filters, text search, paging (newest first)."""
    store = wk(request).store
    params = request.query_params
    try:
        query = alert_query(params, limit=PAGE_SIZE)
    except ValueError as exc:
        return PlainTextResponse(str(exc), status_code=400)
    cursor = last_alert_id(store)
    found = find_alerts(store, query)
    filters = {k: params[k] for k in ("watcher", "severity", "since", "q") if params.get(k)}
    older = (
        "?" + urlencode({**filters, "before": found[-1].id})
        if len(found) == PAGE_SIZE and found[-1].id
        else None
    )
    return page(
        request,
        "alerts.html",
        cursor=cursor,
        alerts=found,
        filters=filters,
        older=older,
        paged=query.before_id is not None,
        watchers=watcher_names(store),
        severities=[str(s) for s in Severity],
        since_choices=SINCE_CHOICES,
    )


async def watcher_page(request: Request) -> Response:
    """One watcher: state, actions, its checkpoint as a tree, its latest alerts."""
    ctx = wk(request)
    name = request.path_params["name"]
    record = ctx.store.watcher(name)
    if record is None:
        return page(request, "missing.html", status=404, name=name)
    now = time.time()
    cursor = last_alert_id(ctx.store)
    count = alerts_per_watcher(ctx.store, now - DAY).get(name, 0)
    info = watcher_detail(record, running_config(ctx, name), ctx.store)
    detail = f"detail_{re.sub(r'[^a-z0-9_]', '_', record.kind)}.html"
    try:
        ctx.env.get_template(detail)
    except TemplateNotFound:
        detail = "detail_generic.html"
    if info is None and has_view(record.kind):  # a checkpoint its view cannot read
        detail = "detail_generic.html"
    return page(
        request,
        "watcher.html",
        cursor=cursor,
        watcher=watcher_doc(record, count, now, threads(ctx).get(record.name)),
        record=record,
        detail=detail,
        info=info,
        raw=checkpoint_json(record.checkpoint),
        alerts=find_alerts(ctx.store, AlertQuery(watcher=name, limit=20)),
        running=name in running_names(ctx),
    )


async def notifiers_page(request: Request) -> Response:
    """Each notifier's outbox: pending, sent, failed, last error."""
    ctx = wk(request)
    return page(request, "notifiers.html", notifiers=notifier_docs(ctx.store, ctx.keeper))


# -- login ------------------------------------------------------------------------------------


async def form_data(request: Request) -> dict[str, str]:
    """A urlencoded form body (the only kind our pages send), first value of each field."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def login(request: Request) -> Response:
    """Check the token from the form; set the session cookie."""
    ctx = wk(request)
    client = request.client.host if request.client else "?"
    wait = ctx.logins.wait(client)
    if wait > 0:  # before reading the form: a guesser gets no answer about its guess
        return PlainTextResponse(
            "too many wrong tokens; try again later",
            status_code=429,
            headers={"Retry-After": str(math.ceil(wait))},
        )
    form = await form_data(request)
    target = safe_next(form.get("next"))
    if not ctx.guard.same_origin(request):
        return PlainTextResponse("cross-site login refused", status_code=403)
    if not ctx.guard.token_matches(form.get("token", "")):
        ctx.logins.failed(client)
        return page(
            request, "login.html", status=401, anonymous=True, next=target, error="wrong token"
        )
    response = RedirectResponse(target, status_code=303)
    ctx.guard.session_cookie(response, secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    """Forget the session cookie."""
    form = await form_data(request)
    if not wk(request).guard.csrf_ok(request, form.get("csrf")):
        return PlainTextResponse("invalid form; reload the page", status_code=403)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie("wk_session", path="/")
    return response


def safe_next(target: str | None) -> str:
    """Only local paths: a login must not redirect to another site."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


# -- actions ----------------------------------------------------------------------------------


async def action(request: Request) -> Response:
    """POST check | pause | resume | mute (form field ``duration``; empty or 0 unmutes)."""
    ctx = wk(request)
    name, verb = request.path_params["name"], request.path_params["action"]
    api = request.url.path.startswith("/api/")
    form = await form_data(request)
    if not ctx.guard.csrf_ok(request, form.get("csrf")):
        return reply(api, 403, "the form's CSRF token is missing or stale; reload the page")
    if verb not in ACTIONS:
        return reply(api, 404, f"no action {verb!r}; use one of {', '.join(ACTIONS)}")
    if name not in running_names(ctx):
        return reply(api, 404, f"no running watcher named {name!r}")
    duration: float | None = None
    if verb == "mute":
        try:
            duration = parse_duration(form.get("duration") or "0") or None
        except ValueError as exc:
            return reply(api, 400, f"duration: {exc}")
    keeper = ctx.keeper
    run = {
        "check": lambda: keeper.check_now(name),
        "pause": lambda: keeper.pause(name),
        "resume": lambda: keeper.resume(name),
        "mute": lambda: keeper.mute(name, duration),
    }[verb]
    await anyio.to_thread.run_sync(run)
    doc = next(d for d in watcher_docs(ctx.store, threads(ctx)) if d["name"] == name)
    ctx.broadcaster.publish(doc)
    if api:
        return JSONResponse({"ok": True, "action": verb, "watcher": doc})
    return RedirectResponse(safe_next(form.get("next") or f"/watchers/{name}"), status_code=303)


def reply(api: bool, status: int, message: str) -> Response:
    """An error as JSON for the API, as text for a form post."""
    if api:
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(message, status_code=status)


# -- API --------------------------------------------------------------------------------------


async def api_watchers(request: Request) -> Response:
    """``GET /api/watchers``: every watcher's row."""
    return JSONResponse(all_watchers(wk(request)))


async def api_watcher(request: Request) -> Response:
    """``GET /api/watchers/NAME``: the row, checkpoint, rule state and the kind's detail view."""
    ctx = wk(request)
    store = ctx.store
    name = request.path_params["name"]
    record = store.watcher(name)
    if record is None:
        return JSONResponse({"error": f"no watcher named {name!r}"}, status_code=404)
    docs = {d["name"]: d for d in all_watchers(ctx)}
    detail = watcher_detail(record, running_config(ctx, name), store)
    return JSONResponse(
        {
            **docs[name],
            "checkpoint": record.checkpoint,
            "rule_state": record.rule_state,
            "detail": detail,
        }
    )


async def api_alerts(request: Request) -> Response:
    """``GET /api/alerts?since_id=&severity=&watcher=&since=&q=&limit=``: oldest first.

    ``since`` is a duration (``1h``) or an ISO 8601 time, as in every command and the stream.
    """
    try:
        query = alert_query(request.query_params, limit=1000)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    found = find_alerts(wk(request).store, query, newest_first=False)
    return JSONResponse([a.to_dict() for a in found])


async def api_notifiers(request: Request) -> Response:
    """``GET /api/notifiers``: each notifier's outbox."""
    ctx = wk(request)
    return JSONResponse(notifier_docs(ctx.store, ctx.keeper))


async def api_agents(request: Request) -> Response:
    """``GET /api/agents``: every agent on this store: alive, last heartbeat, what it runs."""
    return JSONResponse(fleet_view(wk(request))[0])


async def api_health(request: Request) -> Response:
    """``GET /api/health``: every thread's state and the store's, from the supervisor."""
    health = await anyio.to_thread.run_sync(wk(request).keeper.health)
    return JSONResponse(health)


async def stream(request: Request) -> Response:
    """``GET /api/stream``: SSE; resume with ``Last-Event-ID`` or ``?since_id=ID``, or replay from
    ``?since=`` a duration or time first (``Last-Event-ID`` wins: a reconnect resumes exactly).
    """
    ctx = wk(request)
    params = request.query_params
    raw = request.headers.get("last-event-id") or params.get("since_id")
    try:
        since = int(raw) if raw else None
        if since is not None and not 0 <= since <= SQLITE_MAX:
            raise ValueError(f"resume id {raw!r} is out of range")
        if since is None and params.get("since"):
            since = first_alert_since(ctx.store, parse_since(params["since"])) - 1
        selector = StreamFilter(
            Severity.parse(params.get("severity") or "debug"), params.get("watcher") or None
        )
    except ValueError as exc:
        return JSONResponse({"error": f"bad stream parameter: {exc}"}, status_code=400)
    return StreamingResponse(
        alert_events(ctx.broadcaster, ctx.store, since, selector),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# -- helpers ----------------------------------------------------------------------------------


def alert_query(params: Any, limit: int) -> AlertQuery:
    """Filters from query parameters; ValueError names the bad one."""

    def number(key: str) -> int | None:
        value = params.get(key)
        if not value:
            return None
        try:
            found = int(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a number") from None
        if not -SQLITE_MAX <= found <= SQLITE_MAX:
            raise ValueError(f"{key}={value!r} is out of range")
        return found

    since = params.get("since")
    return AlertQuery(
        watcher=params.get("watcher") or None,
        min_severity=Severity.parse(params.get("severity") or "debug"),
        since=parse_since(since) if since else None,
        q=params.get("q") or None,
        before_id=number("before"),
        since_id=number("since_id") or 0,
        limit=max(1, min(number("limit") or limit, limit)),
    )


def relative_time(iso: str | None) -> str:
    """``"12s ago"`` / ``"in 3m"`` from an ISO time, for the first render (JS keeps it fresh)."""
    if not iso:
        return "never"
    delta = time.time() - datetime.fromisoformat(iso).timestamp()
    if abs(delta) < 1:
        return "now"
    return f"{format_duration(delta)} ago" if delta > 0 else f"in {format_duration(-delta)}"
