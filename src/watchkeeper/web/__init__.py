"""The dashboard: HTML pages, a JSON API, a live Server-Sent Events stream and /metrics.

Starlette + uvicorn on one daemon thread (:mod:`watchkeeper.web.server`), Jinja2 templates with
autoescape, plain CSS and JavaScript with no build step. The core does not import this package:
the owner of a screen (the CLI, the demo, an embedding program) calls :func:`serve_dashboard`,
which attaches the dashboard to a keeper. Importing it loads no web library; the server imports
uvicorn and the app when it starts serving.
"""

from watchkeeper.web.server import Dashboard, DashboardError, serve_dashboard

__all__ = ["Dashboard", "DashboardError", "serve_dashboard"]
