"""Progress reporting from long operations to whatever front end is listening (rich, MCP, none)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def begin(self, description: str, total: int | None, unit: str = "items") -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def end(self) -> None: ...


class NoProgress:
    def begin(self, description: str, total: int | None, unit: str = "items") -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def end(self) -> None:
        pass


NO_PROGRESS = NoProgress()
