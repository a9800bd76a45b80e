"""ROS parameters generated from the settings dataclasses (names = fields = CLI flags).

`declare_config(node, LocalizationConfig)` declares one parameter per field with the field's
default and its help text as the description; `read_config(node, LocalizationConfig)` builds
the dataclass from the current values, so its validation (ValueError naming the field) is the
parameters' validation. For MappingConfig the `preset` parameter is declared and read first
and its values become the other parameters' defaults, keeping the CLI's precedence:
dataclass defaults < preset < parameter file / command line.

Node-specific parameters (map_path, frames, rates) use `declare_parameters` /
`read_parameters` with a `ParamSpec` table, so they also carry a description.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Type, TypeVar

from ace_ros.core.config import config_from_dict, config_to_dict, mapping_config, PRESETS
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

T = TypeVar('T')


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter that is not a settings field: default and description."""

    default: Any
    description: str
    read_only: bool = False


def _descriptor(description: str, default: Any, read_only: bool = False) -> ParameterDescriptor:
    # Floats are dynamically typed so that 'epochs: 16' in a YAML file is accepted (rclpy
    # would refuse an integer for a double parameter); config_from_dict converts and checks.
    return ParameterDescriptor(description=description, read_only=read_only,
                               dynamic_typing=isinstance(default, float))


def config_defaults(cls: Type[Any], node: Optional[Node] = None) -> Dict[str, Any]:
    """Field defaults of `cls`; for MappingConfig with the preset (read from `node`) applied."""
    if 'preset' in {f.name for f in dataclasses.fields(cls)} and node is not None:
        preset = node.get_parameter('preset').value
        if preset not in PRESETS:
            raise ValueError(f"parameter preset: unknown preset '{preset}'; choose one of "
                             f'{sorted(PRESETS)}')
        return config_to_dict(mapping_config(preset))
    return {f.name: f.default for f in dataclasses.fields(cls)}


def declare_config(node: Node, cls: Type[Any], skip: Iterable[str] = ()) -> None:
    """Declare one parameter per field of the settings dataclass `cls`.

    Args:
        node: the node.
        cls: LocalizationConfig or MappingConfig (any dataclass with 'help' metadata).
        skip: field names not to declare (read_config then uses their defaults).

    Raises:
        ValueError: for an unknown preset given to a MappingConfig node.
    """
    skip = set(skip)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    names = {f.name for f in fields}
    if 'preset' in names:
        preset_field = next(f for f in fields if f.name == 'preset')
        node.declare_parameter('preset', preset_field.default, _descriptor(
            preset_field.metadata.get('help', ''), preset_field.default))
    defaults = config_defaults(cls, node if 'preset' in names else None)
    for f in fields:
        if f.name == 'preset':
            continue
        node.declare_parameter(f.name, defaults[f.name],
                               _descriptor(f.metadata.get('help', ''), defaults[f.name]))


def read_config(node: Node, cls: Type[T], overrides: Optional[Mapping[str, Any]] = None) -> T:
    """Build `cls` from the node's current parameter values (plus `overrides`).

    Raises:
        ValueError: naming the parameter, for a wrong type or a value the dataclass refuses.
    """
    values = {}
    for f in dataclasses.fields(cls):
        if node.has_parameter(f.name):
            values[f.name] = node.get_parameter(f.name).value
    values.update(overrides or {})
    return config_from_dict(cls, values, f'{node.get_name()} parameters')


def declare_parameters(node: Node, specs: Mapping[str, ParamSpec]) -> None:
    """Declare node parameters from a {name: ParamSpec} table."""
    for name, spec in specs.items():
        node.declare_parameter(name, spec.default,
                               _descriptor(spec.description, spec.default, spec.read_only))


def read_parameters(node: Node, specs: Mapping[str, ParamSpec]) -> Dict[str, Any]:
    """{name: value} of the parameters in `specs`, type-checked against their defaults.

    Raises:
        ValueError: for a value whose type differs from the default's (ints are accepted
            for floats).
    """
    values = {}
    for name, spec in specs.items():
        value = node.get_parameter(name).value
        want = type(spec.default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ValueError(f'parameter {name} must be {want.__name__}, got {value!r}')
        values[name] = value
    return values
