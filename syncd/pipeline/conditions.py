"""What is wrong beyond one session: the receiver refusing the key, the opencode database gone
or unreadable, a mass deletion held back; and notices of what happened to all sessions (the
database replaced).

Each is logged once when it begins (and once when it ends), kept in the state for
`syncd status`, and while a problem lasts /health answers 503 and systemd's STATUS line says so.
"""

from __future__ import annotations

import structlog

from .. import jsontext
from ..metrics import Health
from ..state.store import StateStore

log = structlog.get_logger("syncd")

RECEIVER = "receiver"
SOURCE = "source"
DELETIONS = "deletions"
SOURCE_REPLACED = "source_replaced"


class Conditions:
    def __init__(self, state: StateStore, health: Health) -> None:
        self._state = state
        self._health = health
        self.current: dict[str, str] = {}

    async def load(self) -> None:
        """Take over what the state recorded (a condition outlives a restart until it ends)."""
        for condition in await self._state.conditions():
            if condition["problem"]:
                self.current[condition["name"]] = condition["message"]
                self._health.conditions[condition["name"]] = condition["message"]

    async def set(self, name: str, message: str) -> None:
        message = jsontext.readable_text(message)  # it may quote what the receiver said
        if self.current.get(name) == message:
            return
        self.current[name] = message
        self._health.conditions[name] = message
        log.warning(message, condition=name)
        await self._state.set_condition(name, message)

    async def clear(self, name: str) -> None:
        if self.current.pop(name, None) is None:
            return
        self._health.conditions.pop(name, None)
        log.info("resolved", condition=name)
        await self._state.set_condition(name, None)

    async def note(self, name: str, message: str) -> None:
        """Something that happened, not a lasting problem: logged, shown by `syncd status`."""
        log.warning(message, notice=name)
        await self._state.set_condition(name, message, problem=False)
