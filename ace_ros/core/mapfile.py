"""The map file: one trained scene head in a self-describing, versioned safetensors file.

Layout (format 'ace_ros.map', versions 1 to 3; '.ace' by convention). A plain safetensors
file, so it is never unpickled and any safetensors reader can open it:

- tensors ``head.<name>``: the head's state dict (``Head.weights()``), float tensors as fp16;
- tensor ``scene_mean``: (3,) fp32, the world-frame offset the head predicts around;
- since version 2, optional: tensors ``cloud.points`` (N, 3) fp32 and ``cloud.colors`` (N, 3)
  uint8 RGB, a point cloud of the scene for display (`MapCloud`);
- since version 3 (a map of several regions, `ace_ros.core.regions`): the tensors above are
  region 0's; region r >= 1 has ``region<r>.head.<name>`` and ``region<r>.scene_mean``;
  ``regions.contexts`` (M, 512) fp16 and ``regions.labels`` (M,) int64 are each mapping
  image's context and region, which rank the regions for a query;
- string metadata: ``format``, ``ace_ros_version``, ``encoder_sha256`` (see
  `encoder_identity`), ``world_frame_id``, ``created_utc`` (ISO 8601), ``payload_sha256``
  (see `_payload_sha256`) as plain strings; ``format_version`` (int), ``head_config``,
  ``mapping_config``, ``intrinsics`` (distinct 3x3 K, row-major), ``frame_names``,
  ``extras`` as JSON text.

The format's versions and the checks of a file's header are `ace_ros.core.mapfile_header`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
import hashlib
import json
import logging
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional

from ace_ros import __version__
from ace_ros.core.atomic_file import write_atomically
from ace_ros.core.mapfile_header import (
    CLOUD_FORMAT_VERSION, FORMAT, FORMAT_VERSION, header_length, JSON_KEYS, MAX_MAP_BYTES,
    MapFileError, OLDEST_FORMAT_VERSION, parse_header, stat_map)
import numpy as np
from safetensors import SafetensorError
import safetensors.torch
import torch

_logger = logging.getLogger(__name__)

_HEAD_PREFIX = 'head.'
_CLOUD_KEYS = ('cloud.points', 'cloud.colors')
_REGION_KEYS = ('regions.contexts', 'regions.labels')
_REGION_RE = re.compile(r'region([1-9][0-9]*)\.(scene_mean|head\.(.+))')
_SHA256_RE = re.compile(r'[0-9a-f]{64}')


class EncoderMismatchError(MapFileError):
    """The map's head was trained against a different encoder than the one loaded."""


def encoder_identity(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 identity of an encoder's weights, independent of their storage precision.

    Keys are hashed in sorted order, each as its name, shape and values. Float values are
    cast to fp32 and then rounded to fp16 before hashing, so fp64/fp32 weights and an fp16
    copy made from them give the same identity (bf16 copies do not: they lose mantissa bits
    that fp16 keeps). Changing any weight by more than fp16 rounding changes the identity.

    Args:
        state_dict: encoder tensors by name, e.g. ``Encoder().state_dict()``.

    Returns:
        64 lowercase hex characters.

    Raises:
        ValueError: if `state_dict` is empty or holds a non-tensor.
    """
    if not state_dict:
        raise ValueError('encoder_identity: got an empty state dict, expected encoder tensors')
    digest = hashlib.sha256(b'ace_ros.encoder_identity.v1\0')
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f'encoder_identity: {name} is a {type(tensor).__name__}, '
                             f'expected a torch.Tensor')
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32).to(torch.float16)
        elif tensor.dtype != torch.bool:
            tensor = tensor.to(torch.int64)
        digest.update(f'{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0'.encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class MapCloud:
    """Scene points of a map, for display (RViz): not used to localize.

    Construction validates and normalises the dtypes, so a MapCloud equals the copy that
    `load_map` returns after `save_map`.

    Attributes:
        points: (N, 3) float32 world-frame points, N >= 1, finite.
        colors: (N, 3) uint8 RGB, one per point.
    """

    points: np.ndarray
    colors: np.ndarray

    def __post_init__(self) -> None:
        points = np.ascontiguousarray(np.asarray(self.points, dtype=np.float32))
        if points.ndim != 2 or points.shape[1] != 3 or not len(points):
            raise ValueError(f'cloud points must be (N, 3) with N >= 1, got shape '
                             f'{points.shape}')
        if not np.all(np.isfinite(points)):
            raise ValueError('cloud points must be finite')
        colors = np.asarray(self.colors)
        if colors.shape != points.shape:
            raise ValueError(f'cloud colors must be (N, 3) like the points {points.shape}, '
                             f'got {colors.shape}')
        if colors.dtype != np.uint8:
            raise ValueError(f'cloud colors must be uint8 RGB, got {colors.dtype}')
        object.__setattr__(self, 'points', points)
        object.__setattr__(self, 'colors', np.ascontiguousarray(colors))

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True, eq=False)
class RegionHead:
    """The head of one region of a map with several (region 0's is the map's own).

    Attributes:
        head_state: as `SceneMap.head_state`; scene_mean: as `SceneMap.scene_mean`.
    """

    head_state: Dict[str, torch.Tensor]
    scene_mean: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, 'head_state', _checked_head(self.head_state))
        object.__setattr__(self, 'scene_mean', _checked_mean(self.scene_mean))


@dataclass(frozen=True, eq=False)
class SceneMap:
    """A trained scene: the head's weights plus everything needed to use them safely.

    Construction validates and normalises: float head tensors become fp16 on the CPU,
    `scene_mean` becomes (3,) fp32, dict/list fields become their JSON form, so a SceneMap
    equals (tensor for tensor, field for field) the copy `load_map` returns after `save_map`.

    Attributes:
        head_state: head tensors by name as in ``Head.weights()`` (no ``scene_mean``).
        scene_mean: (3,) world-frame mean of the mapping scene coordinates.
        encoder_sha256: `encoder_identity` of the encoder the head was trained with.
        head_config: ``HeadConfig.to_dict()``.
        world_frame_id: frame id of the world (map) frame the head predicts in.
        mapping_config: the training settings (JSON-serialisable).
        intrinsics: distinct (3, 3) K of the mapping images, as nested lists.
        frame_names: names of the mapping frames.
        extras: any further JSON-serialisable facts (e.g. training statistics).
        created_utc: ISO 8601 time the map was first saved; '' until then.
        ace_ros_version: version of ace_ros that wrote the file; '' for a new map.
        cloud: scene points for display, or None (maps of version 1, or none predicted).
        more_regions: the heads of regions 1.. of a map with several regions (else empty).
        region_contexts: (M, C) each mapping image's context (needed with more_regions).
        region_labels: (M,) int64 each mapping image's region in 0..len(more_regions).
    """

    head_state: Dict[str, torch.Tensor]
    scene_mean: torch.Tensor
    encoder_sha256: str
    head_config: Dict[str, Any]
    world_frame_id: str
    mapping_config: Dict[str, Any] = field(default_factory=dict)
    intrinsics: List[List[List[float]]] = field(default_factory=list)
    frame_names: List[str] = field(default_factory=list)
    extras: Dict[str, Any] = field(default_factory=dict)
    created_utc: str = ''
    ace_ros_version: str = ''
    cloud: Optional[MapCloud] = None
    more_regions: List[RegionHead] = field(default_factory=list)
    region_contexts: Optional[torch.Tensor] = None
    region_labels: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        head = _checked_head(self.head_state)
        mean = _checked_mean(self.scene_mean)
        self._check_regions()
        if not isinstance(self.encoder_sha256, str) or not _SHA256_RE.fullmatch(
                self.encoder_sha256):
            raise ValueError(f'encoder_sha256 must be 64 lowercase hex characters, got '
                             f'{self.encoder_sha256!r}')
        if not isinstance(self.world_frame_id, str) or not self.world_frame_id:
            raise ValueError(f'world_frame_id must be a non-empty str, got '
                             f'{self.world_frame_id!r}')
        intrinsics = []
        for i, K in enumerate(self.intrinsics):
            K = np.asarray(K, dtype=np.float64)
            if K.shape != (3, 3) or not np.all(np.isfinite(K)):
                raise ValueError(f'intrinsics[{i}] must be a finite (3, 3) K, got shape '
                                 f'{K.shape}')
            intrinsics.append(K.tolist())
        if isinstance(self.frame_names, str) or not all(
                isinstance(n, str) for n in self.frame_names):
            raise ValueError(f'frame_names must be a list of str, got {self.frame_names!r:.80}')
        for name, value in (('head_config', self.head_config),
                            ('mapping_config', self.mapping_config), ('extras', self.extras)):
            if not isinstance(value, Mapping):
                raise ValueError(f'{name} must be a dict, got {type(value).__name__}')
            object.__setattr__(self, name, _json_copy(dict(value), name))
        object.__setattr__(self, 'head_state', head)
        object.__setattr__(self, 'scene_mean', mean)
        object.__setattr__(self, 'intrinsics', intrinsics)
        object.__setattr__(self, 'frame_names', list(self.frame_names))
        if self.cloud is not None and not isinstance(self.cloud, MapCloud):
            raise ValueError(f'cloud must be a MapCloud or None, got '
                             f'{type(self.cloud).__name__}')

    @property
    def n_regions(self) -> int:
        return 1 + len(self.more_regions)

    def region(self, index: int) -> RegionHead:
        """Region `index`'s head (0: the map's own head_state and scene_mean)."""
        if index == 0:
            return RegionHead(self.head_state, self.scene_mean)
        return self.more_regions[index - 1]

    def _check_regions(self) -> None:
        regions = list(self.more_regions)
        if not all(isinstance(r, RegionHead) for r in regions):
            raise ValueError('more_regions must be a list of RegionHead')
        object.__setattr__(self, 'more_regions', regions)
        if not regions:
            if self.region_contexts is not None or self.region_labels is not None:
                raise ValueError('region_contexts and region_labels belong to a map with '
                                 'several regions (more_regions is empty)')
            return
        if self.region_contexts is None or self.region_labels is None:
            raise ValueError('a map with several regions needs region_contexts and '
                             'region_labels (which rank the regions for a query)')
        contexts = torch.as_tensor(self.region_contexts).detach().cpu().to(torch.float16)
        labels = torch.as_tensor(self.region_labels).detach().cpu().to(torch.int64)
        if contexts.dim() != 2 or labels.shape != contexts.shape[:1] or not len(labels):
            raise ValueError(f'region_contexts must be (M, C) and region_labels (M,), got '
                             f'{tuple(contexts.shape)} and {tuple(labels.shape)}')
        if not bool(torch.isfinite(contexts).all()):
            raise ValueError('region_contexts must be finite')
        if int(labels.min()) < 0 or int(labels.max()) > len(regions):
            raise ValueError(f'region_labels must be in 0..{len(regions)}, got '
                             f'{int(labels.min())}..{int(labels.max())}')
        object.__setattr__(self, 'region_contexts', contexts.contiguous())
        object.__setattr__(self, 'region_labels', labels.contiguous())


def _checked_head(head_state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`head_state` with float tensors as contiguous fp16 on the CPU; ValueError if it is
    not a non-empty dict of finite tensors."""
    if not isinstance(head_state, Mapping) or not head_state:
        raise ValueError(f'head_state must be a non-empty dict of tensors, got '
                         f'{head_state!r:.80}')
    head = {}
    for name, tensor in head_state.items():
        if not isinstance(name, str) or not name or name == 'scene_mean':
            raise ValueError(f'head_state key {name!r} is not allowed: expected tensor names '
                             f'from Head.weights() (scene_mean is passed separately)')
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f'head_state[{name!r}] is a {type(tensor).__name__}, '
                             f'expected a torch.Tensor')
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f'head_state[{name!r}] has values that are non-finite or '
                                 f'outside the fp16 range (|x| <= 65504)')
        head[name] = tensor.contiguous()
    return head


def _checked_mean(scene_mean: torch.Tensor) -> torch.Tensor:
    mean = torch.as_tensor(scene_mean).detach().cpu().to(torch.float32)
    if tuple(mean.shape) != (3,) or not bool(torch.isfinite(mean).all()):
        raise ValueError(f'scene_mean must be (3,) finite, got shape {tuple(mean.shape)} '
                         f'values {mean.flatten()[:6].tolist()}')
    return mean.contiguous()


def save_map(path: str, scene_map: SceneMap) -> None:
    """Write `scene_map` to `path` atomically.

    See `atomic_file.write_atomically`: on any error the file previously at `path` (if any)
    is untouched and no temporary file is left.

    Raises:
        FileNotFoundError: if the directory of `path` does not exist.
        OSError: if writing fails (e.g. disk full).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'{path}: cannot save map: directory {directory} does not exist')
    tensors = {_HEAD_PREFIX + k: v for k, v in scene_map.head_state.items()}
    tensors['scene_mean'] = scene_map.scene_mean
    if scene_map.cloud is not None:
        tensors['cloud.points'] = torch.from_numpy(scene_map.cloud.points)
        tensors['cloud.colors'] = torch.from_numpy(scene_map.cloud.colors)
    for r, region in enumerate(scene_map.more_regions, start=1):
        tensors.update({f'region{r}.{_HEAD_PREFIX}{k}': v for k, v in region.head_state.items()})
        tensors[f'region{r}.scene_mean'] = region.scene_mean
    if scene_map.more_regions:
        tensors['regions.contexts'] = scene_map.region_contexts
        tensors['regions.labels'] = scene_map.region_labels
        version = FORMAT_VERSION
    else:
        version = (CLOUD_FORMAT_VERSION if scene_map.cloud is not None
                   else OLDEST_FORMAT_VERSION)
    created = scene_map.created_utc or datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
    metadata = {
        'format': FORMAT, 'format_version': version, 'ace_ros_version': __version__,
        'encoder_sha256': scene_map.encoder_sha256, 'head_config': scene_map.head_config,
        'mapping_config': scene_map.mapping_config, 'intrinsics': scene_map.intrinsics,
        'frame_names': scene_map.frame_names, 'world_frame_id': scene_map.world_frame_id,
        'created_utc': created, 'extras': scene_map.extras,
        'payload_sha256': _payload_sha256(tensors)}
    blob = safetensors.torch.save(tensors, metadata={
        k: json.dumps(v, allow_nan=False) if k in JSON_KEYS else v for k, v in metadata.items()})
    write_atomically(path, lambda tmp: tmp.write_bytes(blob))
    _logger.info('saved map %s (%d head tensors, %.1f MB)', path, len(scene_map.head_state),
                 len(blob) / 1e6)


def load_map(path: str, expected_encoder_sha256: Optional[str] = None, *,
             max_bytes: int = MAX_MAP_BYTES) -> SceneMap:
    """Read and verify a map file written by `save_map`.

    Args:
        path: the map file.
        expected_encoder_sha256: `encoder_identity` of the encoder that will run the head;
            when given, a map built with another encoder is refused.
        max_bytes: files larger than this are refused before being read.

    Returns:
        The SceneMap, with fp16 head tensors and an fp32 scene mean on the CPU.

    Raises:
        EncoderMismatchError: if the map was built with another encoder.
        MapFileError: if the file is missing, too big, truncated, corrupt, not an ace_ros map,
            of an unsupported format version, or incomplete.
    """
    path = os.fspath(path)
    size = stat_map(path, max_bytes)
    with open(path, 'rb') as fh:
        data = fh.read(max_bytes + 1)
    if len(data) != size:
        raise MapFileError(f'{path}: file changed while reading ({size} then {len(data)} bytes)')
    metadata, _ = parse_header(path, data[:8 + header_length(path, data[:8], size)], size)
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as e:
        raise MapFileError(f'{path}: not a valid safetensors file: {e}') from e
    if _payload_sha256(tensors) != metadata['payload_sha256']:
        raise MapFileError(f'{path}: tensor data is corrupt: its SHA-256 does not match the '
                           f'payload_sha256 {metadata["payload_sha256"][:12]} in the header')
    version = metadata['format_version']
    allowed = ('scene_mean',) + (_CLOUD_KEYS if version >= CLOUD_FORMAT_VERSION else ()) + (
        _REGION_KEYS if version >= FORMAT_VERSION else ())
    unknown = sorted(k for k in tensors if k not in allowed and not k.startswith(_HEAD_PREFIX)
                     and not (version >= FORMAT_VERSION and _REGION_RE.fullmatch(k)))
    if 'scene_mean' not in tensors or unknown:
        raise MapFileError(f'{path}: expected tensors scene_mean and head.*, got scene_mean '
                           f'{"present" if "scene_mean" in tensors else "missing"}, '
                           f'unexpected {unknown[:5]}')
    head = {k[len(_HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(_HEAD_PREFIX)}
    mean = tensors['scene_mean']
    if mean.dtype != torch.float32 or tuple(mean.shape) != (3,) or not mean.isfinite().all():
        raise MapFileError(f'{path}: scene_mean must be (3,) finite float32, got '
                           f'{tuple(mean.shape)} {mean.dtype} {mean.flatten()[:6].tolist()}')
    try:
        scene_map = SceneMap(
            head_state=head, scene_mean=mean, encoder_sha256=metadata['encoder_sha256'],
            head_config=metadata['head_config'], world_frame_id=metadata['world_frame_id'],
            mapping_config=metadata['mapping_config'], intrinsics=metadata['intrinsics'],
            frame_names=metadata['frame_names'], extras=metadata.get('extras', {}),
            created_utc=metadata['created_utc'], ace_ros_version=metadata['ace_ros_version'],
            cloud=_cloud_from(tensors), more_regions=_regions_from(tensors),
            region_contexts=tensors.get('regions.contexts'),
            region_labels=tensors.get('regions.labels'))
    except (ValueError, TypeError) as e:
        raise MapFileError(f'{path}: invalid map contents: {e}') from e
    if expected_encoder_sha256 is not None and (
            expected_encoder_sha256.lower() != scene_map.encoder_sha256):
        raise EncoderMismatchError(
            f'{path}: the map was built with encoder {scene_map.encoder_sha256[:12]} but the '
            f'loaded encoder is {expected_encoder_sha256[:12]}; re-map with this encoder or '
            f'pass --encoder with the encoder file the map was built with')
    return scene_map


def map_info(path: str, max_bytes: int = MAX_MAP_BYTES) -> Dict[str, Any]:
    """The metadata of a map file, reading only its header (for ``ace-ros info``).

    The format, version, required keys and file length are checked; the tensor data is
    neither read nor hashed. Returns the decoded metadata plus ``file_bytes`` and
    ``num_parameters`` (head elements of every region, scene means excluded) and ``regions``.

    Raises:
        MapFileError: as `load_map`, except for corrupt tensor data.
    """
    path = os.fspath(path)
    size = stat_map(path, max_bytes)
    with open(path, 'rb') as fh:
        prefix = fh.read(8)
        header = prefix + fh.read(header_length(path, prefix, size))
    metadata, entries = parse_header(path, header, size)
    metadata['file_bytes'] = size
    region_heads = [k for k in entries if _REGION_RE.fullmatch(k) and '.head.' in k]
    metadata['num_parameters'] = sum(math.prod(entries[k]['shape']) for k in entries
                                     if k.startswith(_HEAD_PREFIX) or k in region_heads)
    metadata['regions'] = 1 + len({k.split('.')[0] for k in region_heads})
    metadata['cloud_points'] = (entries['cloud.points']['shape'][0]
                                if 'cloud.points' in entries else 0)
    return metadata


def _cloud_from(tensors: Mapping[str, torch.Tensor]) -> Optional[MapCloud]:
    """The MapCloud the ``cloud.*`` tensors of a loaded file hold, or None; ValueError if
    only one of them is there."""
    present = [k for k in _CLOUD_KEYS if k in tensors]
    if not present:
        return None
    if len(present) != len(_CLOUD_KEYS):
        raise ValueError(f'the map has {present[0]} but not '
                         f'{[k for k in _CLOUD_KEYS if k not in tensors][0]}')
    points = tensors['cloud.points']
    if points.dtype != torch.float32:
        raise ValueError(f'cloud.points must be float32, got {points.dtype}')
    return MapCloud(points.numpy(), tensors['cloud.colors'].numpy())


def _regions_from(tensors: Mapping[str, torch.Tensor]) -> List[RegionHead]:
    """The RegionHeads of regions 1.. in a loaded file's ``region<r>.*`` tensors; ValueError
    for a gap in their numbers or a region without its scene mean or head."""
    heads: Dict[int, Dict[str, torch.Tensor]] = {}
    means: Dict[int, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = _REGION_RE.fullmatch(key)
        if match:
            r = int(match.group(1))
            if match.group(2) == 'scene_mean':
                means[r] = tensor
            else:
                heads.setdefault(r, {})[match.group(3)] = tensor
    numbers = sorted(set(heads) | set(means))
    if numbers != list(range(1, len(numbers) + 1)) or set(heads) != set(means):
        raise ValueError(f'region tensors must number regions 1..N, each with a head and a '
                         f'scene_mean; got heads {sorted(heads)}, scene means {sorted(means)}')
    return [RegionHead(heads[r], means[r]) for r in numbers]


def _payload_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f'{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0'.encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw element bytes (host order, i.e. little-endian on supported platforms)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _json_copy(value: Any, name: str) -> Any:
    """`value` as it will read back from JSON; ValueError if it is not JSON-serialisable."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f'{name} must be JSON-serialisable: {e}') from e
