"""The share pages `syncd serve` renders: the list of archived sessions at `/` and each
session at its share url `/share/{id}`, live over Server-Sent Events."""

from .routes import SecurityHeaders, page_routes

__all__ = ["SecurityHeaders", "page_routes"]
