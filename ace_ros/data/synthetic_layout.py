"""Random room layouts for the synthetic scene: room, furniture boxes, lights, camera paths.

World frame: metres, z up, the floor at z = 0 and the room centred on x = y = 0, spanning
x in [-Lx/2, Lx/2], y in [-Ly/2, Ly/2], z in [0, Lz].

The camera paths are drawn first (a smooth loop round the middle of the room, one per split)
and furniture is then placed only where it keeps CAMERA_CLEARANCE from every camera position
of both paths, so no view starts inside or right in front of an object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Dict, List, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import axis_angle_to_matrix, make_pose
from ace_ros.data.textures import Material, random_material

FloatArray = npt.NDArray[np.float64]

#: Smallest horizontal distance (m) between any camera position and any furniture.
CAMERA_CLEARANCE = 0.6
SPLITS = ('train', 'test')
_GRID = 0.02  # occupancy grid cell (m)
# Camera axes (x right, y down, z forward) in world axes for yaw = pitch = roll = 0.
_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Box:
    """A box-shaped piece of furniture, or part of one, rotated about the vertical only.

    Attributes:
        center: (3,) world position of the box centre.
        half_size: (3,) half extents along the box's local x, y, z axes.
        yaw: rotation about world z (radians) from world to local axes.
        material: surface material of all faces.
        front: textures decoration of the local -y face ('' for none).
        top: textures decoration of the +z face ('' for none).
    """

    center: Tuple[float, float, float]
    half_size: Tuple[float, float, float]
    yaw: float
    material: Material
    front: str = ''
    top: str = ''

    def rotation(self) -> FloatArray:
        """(3, 3) matrix whose columns are the local x, y, z axes in world coordinates."""
        return axis_angle_to_matrix(np.array([0.0, 0.0, self.yaw]))


@dataclass(frozen=True)
class Light:
    """A point light: (3,) world position and (3,) RGB intensity."""

    position: Tuple[float, float, float]
    intensity: Tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class CameraPath:
    """A closed, smooth camera loop.

    Every quantity q is `base + sum(amp * sin(freq * phi + phase))` of the loop angle phi,
    with integer frequencies so the loop closes. The camera sits at
    `centre + semi_axes * radius * (cos phi, sin phi) + (dx, dy)` at `height`, and looks
    `yaw` radians left of the outward direction, with `pitch` (up positive) and `roll`.

    Attributes:
        centre: (2,) loop centre (x, y).
        semi_axes: (2,) loop semi-axes along x and y.
        series: quantity name -> (base, (K, 3) array of amp, freq, phase).
    """

    centre: Tuple[float, float]
    semi_axes: Tuple[float, float]
    series: Dict[str, Tuple[float, FloatArray]]

    def _eval(self, name: str, phi: FloatArray) -> FloatArray:
        base, terms = self.series[name]
        out = np.full_like(phi, base)
        for amp, freq, phase in terms:
            out += amp * np.sin(freq * phi + phase)
        return out

    def positions(self, s: FloatArray) -> FloatArray:
        """(N,) loop fractions in [0, 1) -> (N, 3) camera centres."""
        phi = 2 * np.pi * np.asarray(s, np.float64)
        radius = self._eval('radius', phi)
        x = self.centre[0] + self.semi_axes[0] * radius * np.cos(phi) + self._eval('dx', phi)
        y = self.centre[1] + self.semi_axes[1] * radius * np.sin(phi) + self._eval('dy', phi)
        return np.stack([x, y, self._eval('height', phi)], 1)

    def poses(self, s: FloatArray) -> List[FloatArray]:
        """(N,) loop fractions in [0, 1) -> N (4, 4) world_from_cam poses."""
        phi = 2 * np.pi * np.asarray(s, np.float64)
        outward = np.arctan2(self.semi_axes[1] * np.sin(phi), self.semi_axes[0] * np.cos(phi))
        yaw = outward + self._eval('yaw', phi)
        pitch, roll = self._eval('pitch', phi), self._eval('roll', phi)
        return [camera_pose(p, a, b, c)
                for p, a, b, c in zip(self.positions(s), yaw, pitch, roll)]


@dataclass(eq=False)
class RoomLayout:
    """Everything geometric about one synthetic room.

    Attributes:
        size: (3,) room extent (Lx, Ly, Lz).
        floor, wall, ceiling: materials of the room's surfaces.
        boxes: furniture boxes.
        lights: point lights.
        paths: split name ('train', 'test') -> camera loop.
    """

    size: Tuple[float, float, float]
    floor: Material
    wall: Material
    ceiling: Material
    boxes: List[Box] = field(default_factory=list)
    lights: List[Light] = field(default_factory=list)
    paths: Dict[str, CameraPath] = field(default_factory=dict)


def camera_pose(position: FloatArray, yaw: float, pitch: float, roll: float) -> FloatArray:
    """(4, 4) world_from_cam of a camera at `position` looking along yaw / pitch (z up).

    yaw = 0 looks along +x, yaw = pi / 2 along +y; pitch > 0 looks up; roll turns the image
    about the optical axis.
    """
    rotation = (axis_angle_to_matrix(np.array([0.0, 0.0, yaw]))
                @ axis_angle_to_matrix(np.array([0.0, -pitch, 0.0])) @ _CAM_AXES
                @ axis_angle_to_matrix(np.array([0.0, 0.0, roll])))
    return make_pose(rotation, np.asarray(position, np.float64))


def distance_to_geometry(layout: RoomLayout, points: FloatArray) -> FloatArray:
    """Distance (m) from each of (N, 3) points to the nearest wall, floor, ceiling or box."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    half = np.array([layout.size[0] / 2, layout.size[1] / 2])
    dist = np.min(np.concatenate([half - np.abs(points[:, :2]), points[:, 2:],
                                  layout.size[2] - points[:, 2:]], 1), 1)
    for box in layout.boxes:
        local = (points - np.asarray(box.center)) @ box.rotation()
        outside = np.maximum(np.abs(local) - np.asarray(box.half_size), 0.0)
        dist = np.minimum(dist, np.linalg.norm(outside, axis=1))
    return dist


def make_layout(rng: np.random.Generator) -> RoomLayout:
    """Draw a room, its camera paths, furniture and lights."""
    size = (rng.uniform(4.5, 6.5), rng.uniform(4.5, 6.5), rng.uniform(2.5, 3.0))
    layout = RoomLayout(size=size,
                        floor=random_material(rng, str(rng.choice(
                            ['floor_wood', 'floor_tiles', 'carpet']))),
                        wall=random_material(rng, 'wall'),
                        ceiling=random_material(rng, 'ceiling'))
    layout.paths = _make_paths(rng, size)
    _furnish(rng, layout)
    n_lights = int(rng.integers(1, 3))
    for _ in range(n_lights):
        xy = rng.uniform(-1.0, 1.0, 2) * (np.asarray(size[:2]) / 2 - 1.0)
        warmth = rng.uniform(0.0, 0.2)
        gain = rng.uniform(1.6, 2.0) / math.sqrt(n_lights)
        layout.lights.append(Light((float(xy[0]), float(xy[1]), size[2] - 0.03),
                                   (gain, gain * (1 - warmth / 2), gain * (1 - warmth))))
    return layout


def _series(rng: np.random.Generator, base: float,
            terms: List[Tuple[float, float, int]]) -> Tuple[float, FloatArray]:
    """(base, (K, 3) amp, freq, phase) with amps drawn in [lo, hi] and random phases."""
    rows = [(rng.uniform(lo, hi), freq, rng.uniform(0, 2 * np.pi)) for lo, hi, freq in terms]
    return base, np.array(rows, np.float64).reshape(-1, 3)


def _make_paths(rng: np.random.Generator, size: Tuple[float, ...]) -> Dict[str, CameraPath]:
    """Train loop and a nearby test loop (shifted <= 0.12 m, turned <= ~15 degrees)."""
    # Radius terms sum to <= 0.1 and test shifts to <= 0.12 m, so cameras stay >= ~1 m from
    # the walls for margins >= 1.15 m.
    semi_axes = tuple((s / 2 - rng.uniform(1.15, 1.35)) / 1.1 for s in size[:2])
    series = {
        'radius': _series(rng, 1.0, [(0.02, 0.05, 2), (0.02, 0.05, 3)]),
        'height': _series(rng, rng.uniform(1.4, 1.6), [(0.06, 0.1, 2), (0.02, 0.04, 5)]),
        'yaw': _series(rng, 0.0, [(0.6, 1.0, 1), (0.4, 0.7, 3), (0.1, 0.3, 5)]),
        'pitch': _series(rng, rng.uniform(-0.3, -0.1), [(0.05, 0.12, 4)]),
        'roll': _series(rng, 0.0, [(0.01, 0.05, 6)]),
        'dx': (0.0, np.zeros((0, 3))), 'dy': (0.0, np.zeros((0, 3))),
    }
    extra = {
        'dx': _series(rng, 0.0, [(0.04, 0.08, 2), (0.01, 0.04, 3)]),
        'dy': _series(rng, 0.0, [(0.04, 0.08, 2), (0.01, 0.04, 3)]),
        'height': _series(rng, 0.0, [(0.02, 0.06, 3)]),
        'yaw': _series(rng, 0.0, [(0.1, 0.25, 2)]),
        'pitch': _series(rng, 0.0, [(0.02, 0.06, 3)]),
    }
    test = {k: (base + extra[k][0] if k in extra else base,
                np.concatenate([terms, extra[k][1]]) if k in extra else terms)
            for k, (base, terms) in series.items()}
    return {'train': CameraPath((0.0, 0.0), semi_axes, series),  # type: ignore[arg-type]
            'test': CameraPath((0.0, 0.0), semi_axes, test)}  # type: ignore[arg-type]


class _Placer:
    """Occupancy grid of the floor: furniture may not overlap, nor come near camera paths."""

    def __init__(self, layout: RoomLayout) -> None:
        self.half = np.array(layout.size[:2]) / 2
        shape = tuple(int(math.ceil(2 * h / _GRID)) for h in self.half[::-1])
        self.height = np.zeros(shape, np.float32)  # tallest furniture per cell
        self.forbidden = np.zeros(shape, np.uint8)
        radius = int(math.ceil(CAMERA_CLEARANCE / _GRID))
        for path in layout.paths.values():
            for p in path.positions(np.linspace(0, 1, 720, endpoint=False)):
                cv2.circle(self.forbidden, self._cell(p[:2]), radius, 1, -1)

    def _cell(self, xy: np.ndarray) -> Tuple[int, int]:
        return int((xy[0] + self.half[0]) / _GRID), int((xy[1] + self.half[1]) / _GRID)

    def try_place(self, xy: np.ndarray, yaw: float, width: float, depth: float,
                  z_range: Tuple[float, float]) -> bool:
        """Claim the yawed footprint if it is inside the room and free up to z_range[0]."""
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [width / 2, depth / 2]
        c, s = math.cos(yaw), math.sin(yaw)
        world = corners @ np.array([[c, s], [-s, c]]) + xy
        if np.any(np.abs(world) > self.half - 0.01):
            return False
        mask = np.zeros_like(self.forbidden)
        cells = ((world + self.half) / _GRID).round().astype(np.int32)
        cv2.fillConvexPoly(mask, cells, 1)
        inside = mask.astype(bool)
        if self.forbidden[inside].any() or self.height[inside].max() > max(0.0, z_range[0] - 0.02):
            return False
        grown = cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)  # keep a 4 cm gap
        self.height[grown] = np.maximum(self.height[grown], z_range[1])
        return True


# A piece of furniture is built in its own frame: footprint centred on the origin, front
# facing local -y, standing on z = 0. Parts are (centre, half_size, yaw, material, front, top).
_Part = Tuple[Tuple[float, float, float], Tuple[float, float, float], float, Material, str, str]


def _table(rng: np.random.Generator) -> Tuple[float, float, float, List[_Part]]:
    w, d, h = rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.9), rng.uniform(0.7, 0.78)
    mat = random_material(rng, str(rng.choice(['wood', 'painted'])))
    parts: List[_Part] = [((0, 0, h - 0.02), (w / 2, d / 2, 0.02), 0.0, mat, '', 'papers')]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(((sx * (w / 2 - 0.05), sy * (d / 2 - 0.05), (h - 0.04) / 2),
                          (0.025, 0.025, (h - 0.04) / 2), 0.0, mat, '', ''))
    parts += _items_on_top(rng, w, d, h)
    return w, d, h, parts


def _cabinet(rng: np.random.Generator) -> Tuple[float, float, float, List[_Part]]:
    tall = rng.random() < 0.35
    w, d = rng.uniform(0.4, 1.4), rng.uniform(0.35, 0.6)
    h = rng.uniform(1.6, 2.1) if tall else rng.uniform(0.5, 1.0)
    mat = random_material(rng, str(rng.choice(['wood', 'painted', 'metal'])))
    parts: List[_Part] = [((0, 0, h / 2), (w / 2, d / 2, h / 2), 0.0, mat, 'drawers', '')]
    return w, d, h, parts + ([] if tall else _items_on_top(rng, w, d, h))


def _shelf(rng: np.random.Generator) -> Tuple[float, float, float, List[_Part]]:
    w, d, h, t = rng.uniform(0.6, 1.2), rng.uniform(0.28, 0.4), rng.uniform(1.4, 2.0), 0.02
    mat = random_material(rng, str(rng.choice(['wood', 'painted'])))
    parts: List[_Part] = [((0, d / 2 - t / 2, h / 2), (w / 2, t / 2, h / 2), 0.0, mat, '', '')]
    for sx in (-1, 1):
        parts.append(((sx * (w / 2 - t / 2), 0, h / 2), (t / 2, d / 2, h / 2), 0.0, mat, '', ''))
    n_boards = max(3, int(h / 0.36))
    pitch = (h - t) / (n_boards - 1)
    inner = w / 2 - t
    for k in range(n_boards):
        z = t / 2 + k * pitch
        parts.append(((0, 0, z), (inner, d / 2 - t, t / 2), 0.0, mat, '', ''))
        if k == n_boards - 1:
            break
        x = -inner
        while x < inner - 0.1:
            bw = min(inner - x, rng.uniform(0.12, 0.6))
            bh = min(pitch - t - 0.02, rng.uniform(0.16, 0.3))
            if rng.random() < 0.8:
                books = random_material(rng, 'painted')
                parts.append(((x + bw / 2, -rng.uniform(0.0, 0.03), z + t / 2 + bh / 2),
                              (bw / 2 - 0.005, d / 2 - t - 0.04, bh / 2), 0.0, books,
                              'books', ''))
            x += bw
    return w, d, h, parts


def _sofa(rng: np.random.Generator) -> Tuple[float, float, float, List[_Part]]:
    w, d, h = rng.uniform(1.4, 2.2), rng.uniform(0.8, 0.95), rng.uniform(0.75, 0.9)
    mat = random_material(rng, 'fabric')
    parts: List[_Part] = [((0, -0.1, 0.21), (w / 2 - 0.15, d / 2 - 0.1, 0.21), 0.0, mat, '', ''),
                          ((0, d / 2 - 0.1, h / 2), (w / 2, 0.1, h / 2), 0.0, mat, '', '')]
    for sx in (-1, 1):
        parts.append(((sx * (w / 2 - 0.075), -0.1, 0.3), (0.075, d / 2 - 0.1, 0.3), 0.0, mat,
                      '', ''))
    return w, d, h, parts


def _crates(rng: np.random.Generator) -> Tuple[float, float, float, List[_Part]]:
    w, d = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6)
    parts: List[_Part] = []
    z = 0.0
    for k in range(int(rng.integers(1, 4))):
        shrink = 1.0 - 0.2 * k
        bh = rng.uniform(0.2, 0.5)
        parts.append(((0, 0, z + bh / 2), (w * shrink / 2, d * shrink / 2, bh / 2),
                      rng.normal(0, 0.15) if k else 0.0, random_material(rng, 'cardboard'),
                      '', ''))
        z += bh
    return w, d, z, parts


def _picture(rng: np.random.Generator) -> Tuple[float, float, float, List[_Part]]:
    w, h = rng.uniform(0.3, 1.2), rng.uniform(0.3, 0.9)
    mat = random_material(rng, 'painted')
    return w, 0.03, h, [((0, 0, h / 2), (w / 2, 0.015, h / 2), 0.0, mat, 'picture', '')]


def _items_on_top(rng: np.random.Generator, w: float, d: float, h: float) -> List[_Part]:
    parts: List[_Part] = []
    for _ in range(int(rng.integers(0, 4))):
        iw, idp, ih = rng.uniform(0.08, 0.35), rng.uniform(0.08, 0.3), rng.uniform(0.03, 0.3)
        x = rng.uniform(-1, 1) * max(0.0, w / 2 - 0.2)
        y = rng.uniform(-1, 1) * max(0.0, d / 2 - 0.2)
        kind = str(rng.choice(['cardboard', 'painted', 'metal']))
        parts.append(((x, y, h + ih / 2), (iw / 2, idp / 2, ih / 2), rng.uniform(0, np.pi),
                      random_material(rng, kind), '', ''))
    return parts


_WALL_PIECES = [(_shelf, 1, 3), (_cabinet, 1, 4), (_sofa, 0, 2), (_table, 0, 2), (_crates, 1, 3)]
_FREE_PIECES = [(_table, 0, 2), (_crates, 0, 3)]


def _furnish(rng: np.random.Generator, layout: RoomLayout) -> None:
    placer = _Placer(layout)
    half = np.array(layout.size[:2]) / 2
    walls = [((1.0, 0.0), 0), ((-1.0, 0.0), 0), ((0.0, 1.0), 1), ((0.0, -1.0), 1)]
    jobs = [(maker, True) for maker, lo, hi in _WALL_PIECES
            for _ in range(int(rng.integers(lo, hi + 1)))]
    jobs += [(maker, False) for maker, lo, hi in _FREE_PIECES
             for _ in range(int(rng.integers(lo, hi + 1)))]
    jobs += [(_picture, True)] * int(rng.integers(2, 7))
    for maker, on_wall in jobs:
        w, d, h, parts = maker(rng)
        z0 = rng.uniform(1.0, 1.6) if maker is _picture else 0.0
        for _ in range(40):
            if on_wall:
                normal, axis = walls[int(rng.integers(4))]
                n = np.array(normal)
                along = rng.uniform(-1, 1) * max(0.0, half[1 - axis] - w / 2 - 0.02)
                xy = -n * half + n * (d / 2 + rng.uniform(0.005, 0.05))
                xy[1 - axis] = along
                yaw = math.atan2(n[0], -n[1])
            else:
                xy = rng.uniform(-1, 1, 2) * (half - 0.5)
                yaw = rng.uniform(0, 2 * np.pi)
            if placer.try_place(xy, yaw, w, d, (z0, z0 + h)):
                rotation = axis_angle_to_matrix(np.array([0.0, 0.0, yaw]))
                for centre, half_size, part_yaw, mat, front, top in parts:
                    world = rotation @ np.asarray(centre, np.float64)
                    layout.boxes.append(Box(
                        (float(world[0] + xy[0]), float(world[1] + xy[1]), float(world[2] + z0)),
                        tuple(float(v) for v in half_size),  # type: ignore[arg-type]
                        float(yaw + part_yaw), mat, front, top))
                break
