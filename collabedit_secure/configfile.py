"""Reading the YAML or TOML configuration files of the coordinator and the party daemons."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """The configuration file is unreadable or a field is missing or wrong (the message names both)."""


def read_config_file(path: Path) -> dict:
    """The top-level mapping of a YAML file, or of a TOML file when the name ends in .toml."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the configuration ({err})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    return data
