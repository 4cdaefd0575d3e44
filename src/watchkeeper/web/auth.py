"""Who may look and act: the token, the login cookie, CSRF and the security headers.

- With ``[keeper] token`` set, every request but ``/login`` and ``/static`` needs it: as
  ``Authorization: Bearer TOKEN`` (API clients, ``follow``, Prometheus) or as the session cookie
  the login form sets. Both are compared in constant time. Without it: 401 (HTML clients get the
  login form with that status, others JSON and ``WWW-Authenticate: Bearer``).
- The cookie holds an HMAC of the token, not the token, and is HttpOnly and SameSite=Strict;
  ``Secure`` when the request came over HTTPS (served with TLS, or from a proxy on loopback that
  says so with ``X-Forwarded-Proto: https``: uvicorn trusts 127.0.0.1's forwarded headers).
- Every POST from a browser must carry the page's CSRF token (a synchronizer token: other sites
  cannot read our pages, so they cannot learn it) and must not come from another origin. A
  request authenticated by the Bearer header needs none: browsers never add that header on their
  own; nor does a non-browser client of a token-less dashboard (see :meth:`Guard.csrf_ok`).
- Without a token the dashboard only binds to loopback (see :mod:`watchkeeper.bind`) and only
  answers to loopback host names, which defeats DNS rebinding.
- Every response forbids inline scripts and framing (Content-Security-Policy).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "wk_session"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
OPEN_PATHS = ("/login", "/static/")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "*.localhost", "[::1]", "::1"]


class Guard:
    """The token (if any) and the tokens derived from it."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None
        key = self.token.encode() if self.token else secrets.token_bytes(32)
        self.session = _derive(key, "session")
        self.csrf = _derive(key, "csrf")
        """Stable across restarts when a token is set, so open pages keep working."""

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison with the configured token."""
        return self.token is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    def bearer(self, request: Request) -> bool:
        """The request carries ``Authorization: Bearer <token>``."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def has_session(self, request: Request) -> bool:
        """The request carries the cookie the login form set."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session.encode())

    def csrf_ok(self, request: Request, submitted: str | None) -> bool:
        """A POST is safe: Bearer-authenticated, or same-origin with the page's CSRF token.

        Without a form token, only a non-browser client on a token-less (so loopback-only)
        dashboard passes: browsers announce every cross-site request with ``Origin`` and
        ``Sec-Fetch-Site`` (the rule Go's ``http.CrossOriginProtection`` uses), so a request with
        neither is a script such as ``curl`` on this machine.
        """
        if self.token is not None and self.bearer(request):
            return True
        fetch_site = request.headers.get("sec-fetch-site")
        if not self.same_origin(request) or fetch_site not in (None, "same-origin", "none"):
            return False
        if submitted is not None:
            return hmac.compare_digest(submitted.encode(), self.csrf.encode())
        return self.token is None and fetch_site is None and "origin" not in request.headers

    @staticmethod
    def same_origin(request: Request) -> bool:
        """No ``Origin`` header (not a browser), or one naming this very host."""
        origin = request.headers.get("origin")
        if not origin:
            return True
        return origin.split("://", 1)[-1] == request.headers.get("host", "")

    def session_cookie(self, response: Response, secure: bool) -> None:
        """Set the login cookie on ``response``; ``secure`` (served over HTTPS): HTTPS only."""
        response.set_cookie(
            SESSION_COOKIE,
            self.session,
            httponly=True,
            samesite="strict",
            path="/",
            secure=secure,
        )


def _derive(key: bytes, purpose: str) -> str:
    return hmac.new(key, f"watchkeeper-{purpose}".encode(), hashlib.sha256).hexdigest()


class AuthMiddleware:
    """Turns away requests without the token (when one is configured)."""

    def __init__(
        self,
        app: ASGIApp,
        guard: Guard,
        login_page: Callable[[Request], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.guard = guard
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.guard.token is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        path: str = scope["path"]
        if path == "/login" or path.startswith("/static/") or self._allowed(request):
            await self.app(scope, receive, send)
            return
        if "text/html" in request.headers.get("accept", ""):
            response = await self.login_page(request)
            response.status_code = 401
        else:
            response = JSONResponse(
                {"error": "a token is required: send Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="watchkeeper"'},
            )
        await response(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        return self.guard.bearer(request) or self.guard.has_session(request)


class SecurityHeadersMiddleware:
    """Adds the CSP and friends to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
