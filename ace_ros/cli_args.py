"""Command-line flags generated from the settings dataclasses, so names exist once.

Every field of MappingConfig / LocalizationConfig becomes `--field-name`; precedence is
defaults < preset < --config YAML < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Dict, Type, TypeVar

import yaml

from ace_ros.core.config import config_from_dict

T = TypeVar('T')


def add_config_flags(parser: argparse.ArgumentParser, cls: Type[Any]) -> None:
    """Add `--config` and one flag per dataclass field (default None = not given)."""
    parser.add_argument('--config', metavar='YAML',
                        help='settings file: a flat mapping of the flags below, or the ROS '
                             'layout <node>: {ros__parameters: {...}}')
    group = parser.add_argument_group(f'{cls.__name__} settings')
    for f in dataclasses.fields(cls):
        flag = '--' + f.name.replace('_', '-')
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})".replace('%', '%%')
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, default=None, type=type(f.default),
                               metavar=type(f.default).__name__.upper(), help=help_text)


def read_yaml_settings(path: str) -> Dict[str, Any]:
    """A flat settings mapping from YAML; the ROS layout's ros__parameters are unwrapped."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f'settings file {path} does not exist')
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f'settings file {path}: expected a mapping, got {type(data).__name__}')
    nested = [v['ros__parameters'] for v in data.values()
              if isinstance(v, dict) and 'ros__parameters' in v]
    if nested:
        if len(nested) > 1:
            raise ValueError(f'settings file {path} holds {len(nested)} nodes; expected one')
        data = nested[0]
    return data


def config_from_args(cls: Type[T], args: argparse.Namespace) -> T:
    """Defaults < preset < YAML < flags -> a validated `cls` instance."""
    values: Dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if getattr(args, 'config', None):
        settings = read_yaml_settings(args.config)
        # The ROS layout may carry node-only parameters (topics, frames): keep ours.
        values.update({k: v for k, v in settings.items() if k in names})
    values.update({name: getattr(args, name) for name in names
                   if getattr(args, name, None) is not None})
    return config_from_dict(cls, values, args.config or 'command line')
