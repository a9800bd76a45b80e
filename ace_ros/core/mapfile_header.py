"""A map file's header: the format's name and versions, and the checks of a file and its
safetensors header made before (or without) reading its tensor data.

`ace_ros.core.mapfile` reads and writes map files (its docstring has the layout); `load_map`
and `map_info` both refuse a file here first, `map_info` reading nothing more.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Dict, Tuple

from ace_ros import __version__

FORMAT = 'ace_ros.map'
#: The newest version this ace_ros reads, and the one it writes for a map of several regions.
FORMAT_VERSION = 3
#: A one-region map with a cloud is written as version 2, and one without a cloud as version
#: 1, so that older ace_ros still read them; an older ace_ros refuses a newer file by its
#: version ("upgrade ace_ros"), not as corrupt.
CLOUD_FORMAT_VERSION = 2
OLDEST_FORMAT_VERSION = 1
#: load_map refuses bigger files before reading them (a default head is ~4.2 MB).
MAX_MAP_BYTES = 64 * 1024 * 1024
#: Metadata values stored as JSON text (the others are plain strings).
JSON_KEYS = ('format_version', 'head_config', 'mapping_config', 'intrinsics', 'frame_names',
             'extras')
_REQUIRED_KEYS = ('format', 'format_version', 'ace_ros_version', 'encoder_sha256',
                  'head_config', 'mapping_config', 'intrinsics', 'frame_names',
                  'world_frame_id', 'created_utc', 'payload_sha256')


class MapFileError(ValueError):
    """A map file is missing, unreadable, corrupt, or not usable by this ace_ros."""


def stat_map(path: str, max_bytes: int) -> int:
    """Size of the regular file `path`, refusing missing, special and oversized files."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise MapFileError(f'{path}: map file does not exist') from e
    except OSError as e:
        raise MapFileError(f'{path}: cannot read map file: {e}') from e
    if not stat.S_ISREG(st.st_mode):
        raise MapFileError(f'{path}: not a regular file')
    if st.st_size > max_bytes:
        raise MapFileError(f'{path}: file is {st.st_size} bytes, more than the {max_bytes} '
                           f'bytes a map file may have')
    return st.st_size


def header_length(path: str, prefix: bytes, size: int) -> int:
    """The JSON header length from the safetensors 8-byte prefix."""
    if len(prefix) < 8:
        raise MapFileError(f'{path}: not a map file: {size} bytes is too short for a '
                           f'safetensors header')
    length = int.from_bytes(prefix, 'little')
    if length > size - 8:
        if length > MAX_MAP_BYTES:
            raise MapFileError(f'{path}: not a safetensors map file (header length field '
                               f'{length} is implausible)')
        raise MapFileError(f'{path}: file is truncated: its header alone needs {8 + length} '
                           f'bytes but the file has {size}')
    return length


def parse_header(path: str, header: bytes, size: int
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Check the header of a file of `size` bytes; return (decoded metadata, tensor entries)."""
    try:
        entries = json.loads(header[8:].decode('utf-8'))
        metadata = entries.pop('__metadata__', None) or {}
        end = max((int(e['data_offsets'][1]) for e in entries.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise MapFileError(f'{path}: not a safetensors map file: bad header ({e})') from e
    if size != len(header) + end:
        problem = 'truncated' if size < len(header) + end else 'too long'
        raise MapFileError(f'{path}: file is {problem}: its header describes '
                           f'{len(header) + end} bytes but the file has {size}')
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise MapFileError(f'{path}: not a safetensors map file: metadata must map str to str')
    if metadata.get('format') != FORMAT:
        raise MapFileError(f'{path}: not an ace_ros map: format is {metadata.get("format")!r}, '
                           f'expected {FORMAT!r}')
    version = metadata.get('format_version', str(OLDEST_FORMAT_VERSION))
    readable = [str(v) for v in range(OLDEST_FORMAT_VERSION, FORMAT_VERSION + 1)]
    if version not in readable:
        newer = version.isdigit() and int(version) > FORMAT_VERSION
        bound, which = ((FORMAT_VERSION, 'newest') if newer
                        else (OLDEST_FORMAT_VERSION, 'oldest'))
        raise MapFileError(f'{path}: map format version {version} is '
                           f'{"newer" if newer else "older"} than version {bound}, the {which} '
                           f'this ace_ros ({__version__}) reads; '
                           + ('upgrade ace_ros' if newer else 're-map the scene'))
    missing = [k for k in _REQUIRED_KEYS if k not in metadata]
    if missing:
        raise MapFileError(f'{path}: map header lacks metadata keys {missing}')
    try:
        decoded = {k: json.loads(v) if k in JSON_KEYS else v for k, v in metadata.items()}
    except ValueError as e:
        raise MapFileError(f'{path}: map metadata is not valid JSON: {e}') from e
    return decoded, entries
