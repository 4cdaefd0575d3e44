"""The dashboard: HTML pages, a JSON API, a live Server-Sent Events stream and /metrics.

Starlette + uvicorn on one daemon thread (:mod:`watchkeeper.web.server`), Jinja2 templates with
autoescape, plain CSS and JavaScript with no build step. This package's ``__init__`` imports
nothing heavy, so the config loader can use :mod:`watchkeeper.web.bind` without pulling in the
web stack.
"""
