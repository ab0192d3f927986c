"""Model descriptions for the `model` SyncData items opencode's share announces.

From opencode's models.dev cache (`models.json`) and the providers configured by hand in
opencode's config, the latter winning; a model known to neither is described minimally as
`{id, providerID, name}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ModelCatalogue:
    def __init__(self, models_json: Path | None, providers: dict[str, Any] | None) -> None:
        self._catalogue = _read_models_json(models_json)
        self._providers = providers or {}

    def describe(self, provider_id: str, model_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        for source in (self._catalogue, self._providers):
            provider = source.get(provider_id)
            models = provider.get("models") if isinstance(provider, dict) else None
            found = models.get(model_id) if isinstance(models, dict) else None
            if isinstance(found, dict):
                entry.update(found)
        return {
            **entry,
            "id": model_id,
            "providerID": provider_id,
            "name": entry.get("name", model_id),
        }


def _read_models_json(path: Path | None) -> dict[str, Any]:
    # The cache is opencode's, refreshed while it runs; a missing or half-written one only
    # means the minimal description is sent.
    if path is None or not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
