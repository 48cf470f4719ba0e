"""Errors that tell a person what went wrong, where, and what to do; and the quarantine.

A source raises :class:`InputError` only for a file it cannot use at all. Damaged records
inside a usable file go to a :class:`Quarantine` with the reason, so that
``read = accepted + rejected`` always holds and nothing vanishes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


class MinewatchError(Exception):
    """Base class of every error minewatch raises on purpose."""


class InputError(MinewatchError):
    """An input that cannot be used. Names the file (and line/record/field when known)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.record = record
        self.field = field
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field:
            where.append(f"field {self.field!r}")
        text = (": ".join([", ".join(where), self.message])) if where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(MinewatchError):
    """A setting or configuration file that cannot be used."""


@dataclass
class Quarantine:
    """Collects rejected records with their reason; optionally writes them as JSON Lines.

    Each rejected record is one line: ``{"source", "where", "reason", "record"}``. The counts
    per reason are kept whether or not a file is written, so a run can always report them.
    """

    path: Path | None = None
    counts: Counter[str] = field(default_factory=Counter)
    _fh: IO[str] | None = field(default=None, repr=False)

    def reject(self, source: str, where: str, reason: str, record: Any = None) -> None:
        self.counts[reason] += 1
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        if isinstance(record, bytes | bytearray | memoryview):
            record = bytes(record)[:512].hex()
        elif record is not None and not isinstance(record, str | int | float | dict | list):
            record = repr(record)[:512]
        line = {"source": source, "where": where, "reason": reason, "record": record}
        self._fh.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
