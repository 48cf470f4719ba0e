"""Settings: embedded defaults, overridden by ``minewatch.toml`` then by ``MINEWATCH_*`` env.

The embedded defaults make every command work on a fresh machine: SQLite in the working
directory, quarantine files next to the outputs.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from minewatch.errors import ConfigError


@dataclass
class Settings:
    database_url: str = "sqlite:///minewatch.db"
    data_dir: Path = field(default_factory=lambda: Path("minewatch-data"))
    quarantine_dir: Path = field(default_factory=lambda: Path("minewatch-data/quarantine"))
    # Sessions idle for longer than this are flushed by streaming detectors (seconds).
    session_idle_s: float = 300.0
    # Detections below this confidence are not printed unless asked for.
    min_confidence: float = 0.5


def _coerce(name: str, value: object, default: object) -> object:
    try:
        if isinstance(default, Path):
            return Path(str(value))
        if isinstance(default, float):
            return float(value)  # type: ignore[arg-type]
        if isinstance(default, int):
            return int(value)  # type: ignore[call-overload]
        return str(value)
    except (TypeError, ValueError) as exc:
        kind = type(default).__name__
        raise ConfigError(f"setting {name}={value!r} is not a valid {kind}") from exc


def load_settings(path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Defaults, then ``minewatch.toml`` (or ``path``), then ``MINEWATCH_<NAME>`` variables."""
    env = dict(os.environ) if env is None else env
    s = Settings()
    toml_path = path or Path(env.get("MINEWATCH_CONFIG", "minewatch.toml"))
    if toml_path.is_file():
        try:
            data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml_path}: not valid TOML: {exc}") from exc
        for f in fields(s):
            if f.name in data:
                setattr(s, f.name, _coerce(f.name, data[f.name], getattr(s, f.name)))
    for f in fields(s):
        key = "MINEWATCH_" + f.name.upper()
        if key in env:
            setattr(s, f.name, _coerce(key, env[key], getattr(s, f.name)))
    return s
