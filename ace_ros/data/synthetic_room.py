"""A procedural textured room rendered by vectorised ray casting, with exact depth.

The room is a set of planar rectangles: floor, ceiling and four walls (seen from inside) and
the faces of the furniture boxes. Each rectangle has its own texture (`textures.py`), lit
once with Lambertian shading and soft shadows from the room's point lights (lighting that
does not depend on the view can be baked), and packed into a mip-mapped atlas
(`texture_atlas.py`).

A view is rendered by scan conversion in closed form: for a plane, inverse depth and the
in-plane coordinates times inverse depth are affine functions of the normalised pixel
coordinates (x_n, y_n). So each visible rectangle costs a few broadcast array operations
over its screen bounding box, an inverse-depth buffer keeps the nearest hit, and one
trilinear cv2.remap per mip level fetches the colours.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import List, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import check_shape
from ace_ros.data.synthetic_layout import (Box, distance_to_geometry, make_layout, RoomLayout,
                                           SPLITS)
from ace_ros.data.texture_atlas import TextureAtlas
from ace_ros.data.textures import Material, surface_texture

FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
U8Image = npt.NDArray[np.uint8]

_NEAR = 0.01  # near clipping distance (m)
_EDGE_EPS = 1e-4  # rectangles grow by this (m) so that shared edges leave no cracks
_SHADING_STEP = 0.06  # lighting is computed on a grid of this spacing (m), then upsampled
_UP = np.array([0.0, 0.0, 1.0])


@dataclass
class _Surfaces:
    """Struct of arrays: S rectangles `origin + a * e1 + b * e2`, a in [0, w1], b in [0, w2].

    `normal` points to the side the rectangle is seen from; `bounded` is False for the room's
    six faces, whose planes need no edge test (the nearest room plane is the one hit).
    """

    origin: FloatArray
    e1: FloatArray
    e2: FloatArray
    normal: FloatArray
    extent: FloatArray
    bounded: npt.NDArray[np.bool_]
    materials: List[Material]
    decorations: List[str]


class SyntheticRoom:
    """A random furnished room, deterministic for its seed, that renders RGB-D views.

    Building it draws the layout and bakes all textures (about a second at the default texel
    size); `render` is then fast and read-only, so one room can serve many threads.

    Args:
        seed: random seed; the same seed gives the same room, bit for bit.
        texel_size: texture resolution on every surface (m per texel).

    Attributes:
        layout: the room's geometry, lights and camera paths.
        texel_size: as given.
    """

    def __init__(self, seed: int = 0, texel_size: float = 0.004) -> None:
        if not 0.002 <= texel_size <= 0.05:
            raise ValueError(f'texel_size must be in [0.002, 0.05] m, got {texel_size}')
        if seed < 0:
            raise ValueError(f'seed must be >= 0, got {seed}')
        rng = np.random.default_rng(seed)
        self.texel_size = float(texel_size)
        self.layout: RoomLayout = make_layout(rng)
        self._surf = _build_surfaces(rng, self.layout)
        tiles = []
        for k, shading in enumerate(_bake_shading(self._surf, self.layout)):
            w1, w2 = self._surf.extent[k]
            shape = (max(1, math.ceil(w2 / texel_size)), max(1, math.ceil(w1 / texel_size)))
            albedo = surface_texture(rng, self._surf.materials[k], shape[0], shape[1],
                                     texel_size, self._surf.decorations[k])
            light = cv2.resize(shading, shape[::-1], interpolation=cv2.INTER_LINEAR)
            tiles.append(np.clip(albedo * light.reshape(*shape, 3), 0, 255).astype(np.uint8))
        _draw_lamps(tiles[1], self._surf, 1, self.layout, texel_size)
        self._atlas = TextureAtlas(tiles)

    @property
    def size(self) -> Tuple[float, float, float]:
        """Room extent (Lx, Ly, Lz), metres; x and y are centred on 0, the floor is z = 0."""
        return self.layout.size

    def trajectory(self, n_frames: int, split: str = 'train',
                   fraction: float = 1.0) -> List[FloatArray]:
        """`n_frames` (4, 4) world_from_cam poses evenly spaced along the first `fraction` of
        one loop of a path.

        The 'test' path is a second, slightly shifted and turned lap whose frames fall
        half-way between the train frames of the same count.
        """
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        if n_frames < 0:
            raise ValueError(f'n_frames must be >= 0, got {n_frames}')
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f'fraction must be in (0, 1], got {fraction}')
        offset = 0.5 if split == 'test' else 0.0
        steps = (np.arange(n_frames) + offset) / max(n_frames, 1)
        return self.layout.paths[split].poses(steps * fraction)

    def distance_to_geometry(self, points: FloatArray) -> FloatArray:
        """Distance (m) from each of (N, 3) world points to the nearest surface."""
        return distance_to_geometry(self.layout, points)

    def render(self, world_from_cam: FloatArray, K: FloatArray, width: int,
               height: int) -> Tuple[U8Image, F32Array]:
        """Render one pinhole view.

        Args:
            world_from_cam: (4, 4) camera-to-world pose, OpenCV camera axes; the camera
                centre must be inside the room.
            K: (3, 3) intrinsics without skew.
            width, height: image size in pixels.

        Returns:
            image: (height, width, 3) uint8 RGB.
            depth: (height, width) float32 z-depth along the optical axis (m).
        """
        world_from_cam = np.asarray(world_from_cam, np.float64)
        K = np.asarray(K, np.float64)
        check_shape(world_from_cam, (4, 4), 'world_from_cam')
        check_shape(K, (3, 3), 'K')
        if width < 1 or height < 1:
            raise ValueError(f'image size must be positive, got {width} x {height}')
        if K[0, 1] != 0 or K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
            raise ValueError(f'K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, '
                             f'got {K.tolist()}')
        rotation, centre = world_from_cam[:3, :3], world_from_cam[:3, 3]
        if np.any(np.abs(centre[:2]) >= np.array(self.size[:2]) / 2) or not (
                0 < centre[2] < self.size[2]):
            raise ValueError(f'camera centre {centre.tolist()} is outside the room '
                             f'{self.size} (x, y centred on 0, floor at z = 0)')
        fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        xn = ((np.arange(width) - cx) / fx).astype(np.float32)
        yn = ((np.arange(height) - cy) / fy).astype(np.float32)
        inv_depth, map_x, map_y, plane_dist = self._scan(rotation, centre, K, xn, yn, width,
                                                         height)
        depth = 1.0 / inv_depth
        map_x *= depth
        map_y *= depth
        # Mip level: log2 of the pixel footprint in texels, z / (f * texel) / sqrt(cos(incidence))
        # with cos = inv_depth * plane_dist / |(x_n, y_n, 1)|, from its inverse square.
        ray_norm = np.sqrt(xn[None, :] ** 2 + yn[:, None] ** 2 + 1.0)
        inv_footprint_sq = float(fx * fy * self.texel_size ** 2) / ray_norm
        inv_footprint_sq *= inv_depth * inv_depth * inv_depth * plane_dist
        lod = -0.5 * np.log2(inv_footprint_sq)
        return self._atlas.sample(map_x, map_y, lod), depth

    def _scan(self, rotation: FloatArray, centre: FloatArray, K: FloatArray, xn: F32Array,
              yn: F32Array, width: int, height: int) -> Tuple[F32Array, ...]:
        """Inverse-depth buffer scan conversion of all rectangles.

        Returns:
            (H, W) float32 inverse depth, atlas x and atlas y times inverse depth, and plane
            distance, of the nearest surface at each pixel.
        """
        s = self._surf
        rel = centre - s.origin
        dist = np.einsum('ij,ij->i', rel, s.normal)  # > 0 where the front side is seen
        # For a world vector v, v . ray = (R^T v) . (x_n, y_n, 1): rows of `v @ R`.
        inv_z = -(s.normal @ rotation) / np.maximum(dist, 1e-9)[:, None]
        a1 = np.einsum('ij,ij->i', rel, s.e1)[:, None] * inv_z + s.e1 @ rotation
        a2 = np.einsum('ij,ij->i', rel, s.e2)[:, None] * inv_z + s.e2 @ rotation
        off = self._atlas.offsets - 0.5
        map_x = a1 / self.texel_size + off[:, :1] * inv_z
        map_y = a2 / self.texel_size + off[:, 1:] * inv_z
        w1, w2 = s.extent[:, :1] + _EDGE_EPS, s.extent[:, 1:] + _EDGE_EPS
        edges = np.stack([a1 + _EDGE_EPS * inv_z, w1 * inv_z - a1,
                          a2 + _EDGE_EPS * inv_z, w2 * inv_z - a2], 1)
        coefs = np.concatenate([inv_z[:, None], map_x[:, None], map_y[:, None], edges], 1)
        coefs = coefs.astype(np.float32)  # (S, 7, 3)
        boxes = _screen_boxes(s, rotation, centre, K, width, height)

        inv_depth = np.zeros((height, width), np.float32)
        buffers = [np.zeros((height, width), np.float32) for _ in range(3)]
        for k in np.flatnonzero((dist > 1e-6) & (boxes[:, 1] > boxes[:, 0])
                                & (boxes[:, 3] > boxes[:, 2])):
            x0, x1, y0, y1 = boxes[k]
            xs, ys = xn[x0:x1], yn[y0:y1]
            c = coefs[k]
            iz = _affine(c[0], xs, ys)
            zb = inv_depth[y0:y1, x0:x1]
            win = iz > zb
            if s.bounded[k]:
                for e in c[3:]:
                    win &= _affine(e, xs, ys) >= 0
            np.copyto(zb, iz, where=win)
            np.copyto(buffers[0][y0:y1, x0:x1], _affine(c[1], xs, ys), where=win)
            np.copyto(buffers[1][y0:y1, x0:x1], _affine(c[2], xs, ys), where=win)
            np.copyto(buffers[2][y0:y1, x0:x1], np.float32(dist[k]), where=win)
        return (inv_depth, *buffers)


def _affine(c: F32Array, xs: F32Array, ys: F32Array) -> F32Array:
    """c0 * x_n + c1 * y_n + c2 on the (len(ys), len(xs)) grid."""
    return (c[0] * xs + c[2])[None, :] + (c[1] * ys)[:, None]


def _screen_boxes(s: _Surfaces, rotation: FloatArray, centre: FloatArray, K: FloatArray,
                  width: int, height: int) -> npt.NDArray[np.int64]:
    """(S, 4) pixel ranges x0, x1, y0, y1 (exclusive ends) that hold each rectangle."""
    corners = np.stack([s.origin, s.origin + s.e1 * s.extent[:, :1],
                        s.origin + s.e1 * s.extent[:, :1] + s.e2 * s.extent[:, 1:],
                        s.origin + s.e2 * s.extent[:, 1:]], 1)
    cam = (corners - centre) @ rotation  # (S, 4, 3)
    front = cam[..., 2] > _NEAR
    boxes = np.zeros((len(cam), 4), np.int64)
    boxes[~s.bounded] = (0, width, 0, height)
    for k in np.flatnonzero(s.bounded & front.any(1)):
        pts = cam[k] if front[k].all() else _clip_near(cam[k])
        u = K[0, 0] * pts[:, 0] / pts[:, 2] + K[0, 2]
        v = K[1, 1] * pts[:, 1] / pts[:, 2] + K[1, 2]
        boxes[k] = (max(0, math.floor(u.min())), min(width, math.ceil(u.max()) + 1),
                    max(0, math.floor(v.min())), min(height, math.ceil(v.max()) + 1))
    return boxes


def _clip_near(poly: FloatArray) -> FloatArray:
    """Clip a (4, 3) camera-frame polygon to z >= _NEAR (Sutherland-Hodgman, one plane)."""
    out = []
    for p, q in zip(poly, np.roll(poly, -1, 0)):
        if p[2] > _NEAR:
            out.append(p)
        if (p[2] > _NEAR) != (q[2] > _NEAR):
            out.append(p + (_NEAR - p[2]) / (q[2] - p[2]) * (q - p))
    return np.array(out)


def _build_surfaces(rng: np.random.Generator, layout: RoomLayout) -> _Surfaces:
    """Room faces first (floor, ceiling, 4 walls), then the visible faces of every box."""
    rows: list = []

    def vertical(center: FloatArray, normal: FloatArray, width: float, tall: float,
                 material: Material, decoration: str, bounded: bool) -> None:
        e1 = np.cross(_UP, normal)
        e1 /= np.linalg.norm(e1)
        origin = center - e1 * width / 2 + _UP * tall / 2
        rows.append((origin, e1, -_UP, normal, (width, tall), bounded, material, decoration))

    lx, ly, lz = layout.size
    corner = np.array([-lx / 2, -ly / 2, 0.0])
    floor_deco = 'rug' if rng.random() < 0.6 else ''
    rows.append((corner, np.eye(3)[0], np.eye(3)[1], _UP, (lx, ly), False, layout.floor,
                 floor_deco))
    rows.append((corner + [0, 0, lz], np.eye(3)[0], np.eye(3)[1], -_UP, (lx, ly), False,
                 layout.ceiling, ''))
    for axis, sign in ((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)):
        normal = sign * np.eye(3)[axis]
        center = -normal * layout.size[axis] / 2 + [0, 0, lz / 2]
        vertical(center, normal, layout.size[1 - axis], lz, layout.wall, 'posters', False)
    for box in layout.boxes:
        axes, half, c = box.rotation(), np.asarray(box.half_size), np.asarray(box.center)
        for axis in (0, 1):
            for sign in (1.0, -1.0):
                deco = box.front if (axis, sign) == (1, -1.0) else ''
                vertical(c + sign * half[axis] * axes[:, axis], sign * axes[:, axis],
                         2 * half[1 - axis], 2 * half[2], box.material, deco, True)
        top = c + half[2] * _UP
        rows.append((top - axes[:, 0] * half[0] - axes[:, 1] * half[1], axes[:, 0], axes[:, 1],
                     _UP, (2 * half[0], 2 * half[1]), True, box.material, box.top))
        if c[2] - half[2] > 1e-3:  # bottoms resting on the floor are never seen
            rows.append((top - 2 * half[2] * _UP - axes[:, 0] * half[0] - axes[:, 1] * half[1],
                         axes[:, 0], axes[:, 1], -_UP, (2 * half[0], 2 * half[1]), True,
                         box.material, ''))
    cols = list(zip(*rows))
    return _Surfaces(*(np.array(col, np.float64) for col in cols[:5]),
                     np.array(cols[5], bool), list(cols[6]), list(cols[7]))


def _bake_shading(s: _Surfaces, layout: RoomLayout) -> List[F32Array]:
    """Per-surface RGB irradiance on a _SHADING_STEP grid: (nb, na, 3) float32 each.

    Ambient light plus each point light's cos(incidence) / (1 + (d / 2 m)^2), zero where a
    box blocks the segment to the light; grids are blurred a little for soft shadows.
    """
    grids, points, normals = [], [], []
    for k in range(len(s.origin)):
        na, nb = (max(2, math.ceil(w / _SHADING_STEP) + 1) for w in s.extent[k])
        a = np.linspace(0, s.extent[k, 0], na)[None, :, None]
        b = np.linspace(0, s.extent[k, 1], nb)[:, None, None]
        p = s.origin[k] + a * s.e1[k] + b * s.e2[k] + 0.005 * s.normal[k]
        grids.append((nb, na))
        points.append(p.reshape(-1, 3))
        normals.append(np.broadcast_to(s.normal[k], (nb * na, 3)))
    pts, nrm = np.concatenate(points), np.concatenate(normals)
    mean_light = np.mean([light.intensity for light in layout.lights], 0)
    shade = (0.26 + 0.03 * nrm[:, 2:]) * mean_light
    for light in layout.lights:
        to_light = np.asarray(light.position) - pts
        dist = np.linalg.norm(to_light, axis=1)
        cos = np.einsum('ij,ij->i', nrm, to_light) / dist
        idx = np.flatnonzero(cos > 0)
        seg, start = to_light[idx].astype(np.float32), pts[idx].astype(np.float32)
        lit = np.ones(len(idx), bool)
        for box in layout.boxes:
            lit &= ~_segments_hit_box(start, seg, box)
        gain = cos[idx] * lit / (1.0 + (dist[idx] / 2.0) ** 2)
        shade[idx] += gain[:, None] * np.asarray(light.intensity)
    out, start_row = [], 0
    for nb, na in grids:
        grid = shade[start_row:start_row + nb * na].reshape(nb, na, 3).astype(np.float32)
        out.append(cv2.GaussianBlur(grid, (3, 3), 0.8, borderType=cv2.BORDER_REPLICATE))
        start_row += nb * na
    return out


def _segments_hit_box(start: F32Array, seg: F32Array, box: Box) -> npt.NDArray[np.bool_]:
    """Whether segments `start + t * seg`, t in [0, 1], cross the box (slab test).

    Args:
        start, seg: (N, 3) float32 segment starts and start-to-end vectors.

    Returns:
        (N,) bool.
    """
    axes = box.rotation().astype(np.float32)
    rel = start - np.asarray(box.center, np.float32)
    t_in = np.full(len(start), -np.inf, np.float32)
    t_out = np.full(len(start), np.inf, np.float32)
    with np.errstate(divide='ignore', invalid='ignore'):
        for j, half in enumerate(box.half_size):
            inv = 1.0 / (seg @ axes[:, j])
            q = rel @ axes[:, j]
            t1, t2 = (-half - q) * inv, (half - q) * inv
            np.maximum(t_in, np.minimum(t1, t2), out=t_in)
            np.minimum(t_out, np.maximum(t1, t2), out=t_out)
    return (t_in < t_out) & (t_out > 0) & (t_in < 1)


def _draw_lamps(tile: U8Image, s: _Surfaces, k: int, layout: RoomLayout, texel: float) -> None:
    """Bright ceiling panels above the point lights (emissive, so drawn after shading)."""
    for light in layout.lights:
        rel = np.asarray(light.position) - s.origin[k]
        u, v = rel @ s.e1[k] / texel, rel @ s.e2[k] / texel
        r = 0.3 / texel
        cv2.rectangle(tile, (int(u - r), int(v - r)), (int(u + r), int(v + r)), (250, 248, 240),
                      -1)
        cv2.rectangle(tile, (int(u - r), int(v - r)), (int(u + r), int(v + r)), (120, 120, 120),
                      max(1, int(0.02 / texel)))
