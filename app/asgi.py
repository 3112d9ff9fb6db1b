"""The ASGI entry point uvicorn workers import: logging set up, then the app."""

from __future__ import annotations

import gc
import sys

from fastapi import FastAPI

from app.log import configure_logging
from app.main import create_app
from app.settings import ConfigError, load_settings


def create() -> FastAPI:
    """Build the app from the environment; a bad setting is one line, not a traceback."""
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # Everything imported so far lives as long as the process: move it out of the
    # collector's way, so full collections under load stay short (tail latency).
    gc.collect()
    gc.freeze()
    return app
