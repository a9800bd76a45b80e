"""Procedural surface textures for the synthetic scene generator.

Every texture lives in its surface's own metric (u, v) coordinates (one texel = `texel`
metres on the surface), so appearance is a function of the 3D point and all views agree.
Textures mix 1/f-like value noise (natural-image-like spectra), material patterns (planks,
tiles, wood grain, drawers, book spines, posters) and random shapes and text marks from 1 cm
to 1 m, so that image patches of 8-64 px look different from place to place: scene
coordinate regression fails on repetitive texture.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
import math
import string
from typing import Callable, Tuple

import cv2
import numpy as np
import numpy.typing as npt

U8Image = npt.NDArray[np.uint8]
F32Image = npt.NDArray[np.float32]
Colour = Tuple[float, float, float]

#: Surface materials and (hue range, saturation range, value range) of their base colours.
MATERIAL_COLOURS = {
    'wall': ((0.0, 1.0), (0.04, 0.3), (0.6, 0.9)),
    'floor_wood': ((0.05, 0.11), (0.35, 0.65), (0.35, 0.75)),
    'floor_tiles': ((0.0, 1.0), (0.0, 0.25), (0.45, 0.9)),
    'carpet': ((0.0, 1.0), (0.2, 0.6), (0.25, 0.6)),
    'ceiling': ((0.0, 1.0), (0.0, 0.05), (0.82, 0.95)),
    'wood': ((0.04, 0.12), (0.3, 0.7), (0.3, 0.85)),
    'painted': ((0.0, 1.0), (0.0, 0.6), (0.2, 0.95)),
    'fabric': ((0.0, 1.0), (0.3, 0.8), (0.2, 0.7)),
    'metal': ((0.0, 1.0), (0.0, 0.1), (0.4, 0.75)),
    'cardboard': ((0.07, 0.1), (0.4, 0.55), (0.55, 0.75)),
}
#: Random stickers / marks per square metre on each material.
_SHAPE_DENSITY = {'wall': 30.0, 'floor_wood': 12.0, 'floor_tiles': 12.0, 'carpet': 12.0,
                  'ceiling': 10.0, 'wood': 35.0, 'painted': 40.0, 'fabric': 30.0,
                  'metal': 40.0, 'cardboard': 40.0}
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
          cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
_CHARS = string.ascii_letters + string.digits + '-.#&%'


@dataclass(frozen=True)
class Material:
    """A surface material: its kind (a key of MATERIAL_COLOURS) and 3 RGB colours in [0, 1]."""

    kind: str
    colours: Tuple[Colour, Colour, Colour]


def random_material(rng: np.random.Generator, kind: str) -> Material:
    """Draw base colours for a material of `kind`."""
    if kind not in MATERIAL_COLOURS:
        raise ValueError(f'material kind must be one of {sorted(MATERIAL_COLOURS)}, got {kind!r}')
    hues, sats, vals = MATERIAL_COLOURS[kind]
    hue = rng.uniform(*hues)
    colours = []
    for _ in range(3):
        h = (hue + rng.normal(0.0, 0.04)) % 1.0
        colours.append(colorsys.hsv_to_rgb(h, rng.uniform(*sats), rng.uniform(*vals)))
    return Material(kind, tuple(colours))  # type: ignore[arg-type]


def fractal_noise(rng: np.random.Generator, height: int, width: int, texel: float,
                  largest: float, smallest: float, beta: float = 0.8, channels: int = 1,
                  stretch: float = 1.0) -> F32Image:
    """Sum of value-noise octaves from `largest` to `smallest` metres, amplitude ~ scale^beta.

    Octaves are summed coarse to fine on a pyramid of grids (each twice the previous) and
    only the sum is upsampled to full size, so the cost is about that of one octave.

    Returns:
        (height, width, channels) float32 with unit standard deviation.
    """
    cell = max(smallest / texel, 1.0)
    n_octaves = max(1, int(math.log2(max(largest / texel, 1.0) / cell)) + 1)
    coarse = cell * 2 ** (n_octaves - 1)
    grid_h = int(height / coarse) + 3
    grid_w = int(width / (coarse * stretch)) + 3
    acc = rng.standard_normal((grid_h, grid_w, channels), dtype=np.float32)
    for k in range(1, n_octaves):
        grid_h, grid_w = 2 * grid_h, 2 * grid_w
        acc = cv2.resize(acc, (grid_w, grid_h), interpolation=cv2.INTER_CUBIC)
        acc = acc.reshape(grid_h, grid_w, channels)
        white = rng.standard_normal((grid_h, grid_w, channels), dtype=np.float32)
        acc += 2.0 ** (-k * beta) * white
    cell_x = max(cell * stretch, 1.0)
    full = cv2.resize(acc, (int(grid_w * cell_x), int(grid_h * cell)),
                      interpolation=cv2.INTER_CUBIC)
    out = full.reshape(full.shape[0], full.shape[1], channels)[:height, :width]
    spread = float(out[::5, ::5].std())
    return out / spread if spread > 1e-3 else out


def surface_texture(rng: np.random.Generator, material: Material, height: int, width: int,
                    texel: float, decoration: str = '') -> U8Image:
    """Texture of one rectangular surface, `height` x `width` texels of `texel` metres.

    Rows run along the surface's v axis (downwards on vertical surfaces), so text reads
    upright.

    Args:
        decoration: '' or one of 'posters', 'rug', 'picture', 'drawers', 'books', 'papers'.

    Returns:
        (height, width, 3) uint8 RGB albedo.
    """
    if decoration not in _DECORATIONS:
        raise ValueError(f'decoration must be one of {sorted(_DECORATIONS)}, got {decoration!r}')
    h, w = height, width
    c0, c1, c2 = (np.asarray(c, np.float32) for c in material.colours)
    kind = material.kind
    if kind == 'floor_wood':
        albedo = _planks(rng, h, w, texel, c0, 0.09, 0.2, 0.6, 1.8)
    elif kind == 'wood':
        albedo = _planks(rng, h, w, texel, c0, 0.15, 0.6, 0.5, 3.0)
    elif kind in ('floor_tiles', 'ceiling'):
        albedo = _tiles(rng, h, w, texel, c0, c1, 0.6 if kind == 'ceiling' else None)
    elif kind in ('carpet', 'fabric'):
        blobs = fractal_noise(rng, h, w, texel, 0.6, 0.05) > 0.4
        weave = rng.standard_normal((h, w, 1), dtype=np.float32)
        albedo = np.where(blobs, c1, c0) * (1 + 0.12 * weave)
    elif kind == 'metal':
        albedo = c0 * (1 + 0.08 * fractal_noise(rng, h, w, texel, 0.2, texel, stretch=20.0))
    elif kind == 'wall' and rng.random() < 0.4:
        albedo = _stripes(rng, h, w, texel, (c0, c1, c2))
    else:
        albedo = np.broadcast_to(c0, (h, w, 3)).astype(np.float32)
    mottle = fractal_noise(rng, h, w, texel, 1.0, 4 * texel, channels=3)
    grit = fractal_noise(rng, h, w, texel, 0.1, texel, 0.3)
    albedo = albedo * (1 + 0.04 * mottle + 0.04 * mottle[..., :1] + 0.07 * grit)
    img = _to_u8(albedo)
    # Faint large shapes in the material's own colours, then contrasting small marks.
    scatter_shapes(img, rng, texel, 12.0, 0.04, 0.4, np.stack([c0, c1, c2]))
    _DECORATIONS[decoration](img, rng, texel)
    scatter_shapes(img, rng, texel, _SHAPE_DENSITY[kind], 0.01, 0.15)
    return img


def scatter_shapes(img: U8Image, rng: np.random.Generator, texel: float, density: float,
                   min_size: float, max_size: float, palette: np.ndarray | None = None) -> None:
    """Draw random shapes, scribbles and text in place; sizes log-uniform in metres.

    Args:
        img: (H, W, 3) uint8 texture, modified in place.
        density: expected shapes per square metre.
        palette: (P, 3) RGB colours in [0, 1] to draw in (+-25 % brightness), or None
            for random contrasting colours.
    """
    h, w = img.shape[:2]
    count = rng.poisson(density * h * w * texel * texel)
    log_lo, log_hi = math.log(min_size / texel), math.log(max_size / texel)
    for _ in range(count):
        size = math.exp(rng.uniform(log_lo, log_hi))
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        if palette is None:
            colour = _random_colour(rng)
        else:
            tone = palette[int(rng.integers(len(palette)))] * rng.uniform(0.75, 1.25) * 255
            colour = tuple(int(min(255, c)) for c in tone)
        thick = -1 if rng.random() < 0.6 else max(1, int(size * rng.uniform(0.04, 0.15)))
        kind = rng.integers(6)
        if kind == 0:
            cv2.circle(img, centre, max(1, int(size / 2)), colour, thick, cv2.LINE_AA)
        elif kind == 1:
            axes = (max(1, int(size / 2)), max(1, int(size * rng.uniform(0.1, 0.5))))
            cv2.ellipse(img, centre, axes, rng.uniform(0, 180), 0, 360, colour, thick,
                        cv2.LINE_AA)
        elif kind == 2:
            box = (centre, (size, size * rng.uniform(0.2, 1.0)), rng.uniform(0, 180))
            _polygon(img, cv2.boxPoints(box), colour, thick)
        elif kind == 3:
            n = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = size / 2 * rng.uniform(0.3, 1.0, n)
            pts = np.stack([centre[0] + radii * np.cos(angles),
                            centre[1] + radii * np.sin(angles)], 1)
            _polygon(img, pts, colour, thick)
        elif kind == 4:
            steps = rng.normal(0, size / 3, (int(rng.integers(2, 7)), 2))
            pts = np.asarray(centre) + np.cumsum(steps, 0)
            cv2.polylines(img, [pts.astype(np.int32)], False, colour, max(1, abs(thick)),
                          cv2.LINE_AA)
        else:
            _text(img, rng, centre, size * rng.uniform(0.15, 0.4), colour)


def _random_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    r = rng.random()
    if r < 0.3:
        rgb: Colour = tuple(rng.uniform(0, 0.25, 3))  # type: ignore[assignment]
    elif r < 0.45:
        rgb = tuple(rng.uniform(0.8, 1.0, 3))  # type: ignore[assignment]
    else:
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
    return tuple(int(255 * c) for c in rgb)  # type: ignore[return-value]


def _polygon(img: U8Image, pts: np.ndarray, colour: Tuple[int, int, int], thick: int) -> None:
    pts = np.round(pts).astype(np.int32)
    if thick < 0:
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    else:
        cv2.polylines(img, [pts], True, colour, thick, cv2.LINE_AA)


def _text(img: U8Image, rng: np.random.Generator, origin: Tuple[int, int], height: float,
          colour: Tuple[int, int, int]) -> None:
    """A random string with glyphs about `height` texels tall, starting at `origin`."""
    if height < 3:
        return
    text = ''.join(rng.choice(list(_CHARS), int(rng.integers(2, 10))))
    font = _FONTS[int(rng.integers(len(_FONTS)))]
    scale = height / 22.0
    cv2.putText(img, text, origin, font, scale, colour, max(1, int(scale * rng.uniform(1, 3))),
                cv2.LINE_AA)


def _to_u8(albedo: np.ndarray) -> U8Image:
    return np.clip(albedo * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _planks(rng: np.random.Generator, h: int, w: int, texel: float, colour: np.ndarray,
            min_width: float, max_width: float, min_len: float, max_len: float) -> F32Image:
    """Staggered boards along u with per-board tone, stretched grain and dark joints."""
    albedo = np.empty((h, w, 3), np.float32)
    grain = fractal_noise(rng, h, w, texel, 0.1, texel, 0.6, stretch=12.0)[..., 0]
    y = 0
    while y < h:
        y1 = min(h, y + max(2, int(rng.uniform(min_width, max_width) / texel)))
        x = -int(rng.uniform(0, max_len) / texel)
        while x < w:
            x1 = x + max(4, int(rng.uniform(min_len, max_len) / texel))
            tone = colour * (1 + 0.18 * rng.standard_normal()) + rng.normal(0, 0.03, 3)
            albedo[y:y1, max(0, x):max(0, x1)] = tone
            albedo[y:y1, max(0, x1 - 1):max(0, x1)] *= 0.5
            x = x1
        albedo[y1 - 1:y1] *= 0.5
        y = y1
    albedo *= (1 + 0.15 * grain + 0.1 * np.sin(6 * grain))[..., None]
    for _ in range(rng.poisson(h * w * texel * texel * 2)):  # knots
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        axes = (int(rng.uniform(0.01, 0.04) / texel) + 1, int(rng.uniform(0.005, 0.015) / texel))
        cv2.ellipse(albedo, centre, axes, 0, 0, 360, tuple(float(c) for c in colour * 0.55), -1)
    return albedo


def _tiles(rng: np.random.Generator, h: int, w: int, texel: float, colour_a: np.ndarray,
           colour_b: np.ndarray, size: float | None) -> F32Image:
    """Square tiles with per-tile tone, marble-like veins and grout joints."""
    size_px = (size or rng.uniform(0.25, 0.6)) / texel
    rows, cols = np.arange(h) // size_px, np.arange(w) // size_px
    n_rows, n_cols = int(rows[-1]) + 1, int(cols[-1]) + 1
    pick = rng.random((n_rows, n_cols, 1)) < (0.0 if size else 0.3)
    tones = np.where(pick, colour_b, colour_a) * (1 + rng.normal(0, 0.05, (n_rows, n_cols, 1)))
    albedo = tones.astype(np.float32)[rows.astype(int)[:, None], cols.astype(int)[None, :]]
    veins = np.abs(np.sin(4 * fractal_noise(rng, h, w, texel, 0.4, 2 * texel)))
    albedo *= (0.88 + 0.12 * np.minimum(1.0, veins * 4))
    joint = max(1, int(0.006 / texel))
    albedo[(np.arange(h) % size_px) < joint] *= 0.6
    albedo[:, (np.arange(w) % size_px) < joint] *= 0.6
    return albedo


def _stripes(rng: np.random.Generator, h: int, w: int, texel: float,
             colours: Tuple[np.ndarray, ...]) -> F32Image:
    """Wallpaper of vertical stripes with random widths and colours."""
    column_colour = np.empty((w, 3), np.float32)
    x = 0
    while x < w:
        x1 = x + max(1, int(rng.uniform(0.01, 0.15) / texel))
        column_colour[x:x1] = colours[int(rng.integers(3))]
        x = x1
    return np.broadcast_to(column_colour, (h, w, 3)).copy()


def _photo(rng: np.random.Generator, h: int, w: int, texel: float) -> U8Image:
    """A colourful picture: mixed-colour fractal noise with a few large shapes and text."""
    size = max(h, w) * texel
    noise = fractal_noise(rng, h, w, texel, size / 2, 2 * texel, 0.7, channels=3)
    mix = rng.normal(0, 0.2, (3, 3)).astype(np.float32)
    img = _to_u8(rng.uniform(0.2, 0.8, 3).astype(np.float32) + noise @ mix.T)
    scatter_shapes(img, rng, texel, 25 / size ** 2, size * 0.03, size * 0.6)
    return img


def _posters(img: U8Image, rng: np.random.Generator, texel: float) -> None:
    h, w = img.shape[:2]
    for _ in range(rng.poisson(h * w * texel * texel * 0.35)):
        ph = int(rng.uniform(0.25, 0.9) / texel)
        pw = int(ph * rng.uniform(0.6, 1.6))
        if ph < 4 or pw < 4 or ph >= h or pw >= w:
            continue
        y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        img[y:y + ph, x:x + pw] = _photo(rng, ph, pw, texel)
        frame = max(1, int(rng.uniform(0.005, 0.03) / texel))
        cv2.rectangle(img, (x, y), (x + pw - 1, y + ph - 1), _random_colour(rng), frame)


def _rug(img: U8Image, rng: np.random.Generator, texel: float) -> None:
    h, w = img.shape[:2]
    rh = min(h - 2, int(rng.uniform(1.0, 2.2) / texel))
    rw = min(w - 2, int(rng.uniform(1.2, 2.8) / texel))
    y, x = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
    img[y:y + rh, x:x + rw] = _photo(rng, rh, rw, texel)
    cv2.rectangle(img, (x, y), (x + rw - 1, y + rh - 1), _random_colour(rng),
                  max(1, int(0.05 / texel)))


def _picture(img: U8Image, rng: np.random.Generator, texel: float) -> None:
    """A framed picture filling the whole face."""
    h, w = img.shape[:2]
    img[:] = _photo(rng, h, w, texel)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), _random_colour(rng), max(1, int(0.02 / texel)))


def _drawers(img: U8Image, rng: np.random.Generator, texel: float) -> None:
    """Drawer / door panels with joints and handles."""
    h, w = img.shape[:2]
    n_cols = max(1, round(w * texel / rng.uniform(0.35, 0.8)))
    n_rows = max(1, round(h * texel / rng.uniform(0.2, 0.5)))
    handle = _random_colour(rng)
    gap = max(1, int(0.005 / texel))
    for r in range(n_rows):
        for c in range(n_cols):
            x0, x1 = c * w // n_cols, (c + 1) * w // n_cols
            y0, y1 = r * h // n_rows, (r + 1) * h // n_rows
            tone = 1 + rng.normal(0, 0.04)
            img[y0:y1, x0:x1] = np.clip(img[y0:y1, x0:x1] * tone, 0, 255).astype(np.uint8)
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (25, 22, 20), gap)
            hw, hh = int(rng.uniform(0.04, 0.14) / texel), int(rng.uniform(0.01, 0.025) / texel)
            cx, cy = (x0 + x1) // 2, y0 + max(hh, int(0.06 / texel))
            cv2.rectangle(img, (cx - hw // 2, cy - hh // 2), (cx + hw // 2, cy + hh // 2),
                          handle, -1, cv2.LINE_AA)


def _books(img: U8Image, rng: np.random.Generator, texel: float) -> None:
    """A row of book spines standing on the bottom edge, with title marks."""
    h, w = img.shape[:2]
    img[:] = (img.astype(np.float32) * 0.3).astype(np.uint8)
    x = 0
    while x < w:
        x1 = min(w, x + max(2, int(rng.uniform(0.012, 0.06) / texel)))
        y0 = int(h * rng.uniform(0.0, 0.35))
        colour = _random_colour(rng)
        img[y0:, x:x1] = colour
        for _ in range(int(rng.integers(0, 4))):
            ym = int(rng.uniform(y0, h))
            cv2.rectangle(img, (x, ym), (x1 - 1, ym + max(1, int(0.01 / texel))),
                          _random_colour(rng), -1)
        img[y0:, x1 - 1:x1] //= 2
        x = x1


def _papers(img: U8Image, rng: np.random.Generator, texel: float) -> None:
    """Sheets of paper with lines of text, and cup rings."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        centre = (rng.uniform(0, w), rng.uniform(0, h))
        size = (0.21 / texel, 0.297 / texel)
        angle = rng.uniform(0, 180)
        pts = cv2.boxPoints((centre, size, angle))
        _polygon(img, pts, (235, 235, 228), -1)
        direction = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
        normal = np.array([-direction[1], direction[0]])
        for k in range(int(rng.integers(3, 12))):
            start = np.asarray(centre) + (normal * (k - 6) * 0.018 - direction * 0.08) / texel
            end = start + direction * rng.uniform(0.03, 0.16) / texel
            cv2.line(img, tuple(start.astype(int)), tuple(end.astype(int)), (60, 60, 70),
                     max(1, int(0.003 / texel)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 3))):
        cv2.circle(img, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(0.04 / texel),
                   (90, 60, 40), max(1, int(0.004 / texel)), cv2.LINE_AA)


def _no_decoration(img: U8Image, rng: np.random.Generator, texel: float) -> None:
    del img, rng, texel


_DECORATIONS: dict[str, Callable[[U8Image, np.random.Generator, float], None]] = {
    '': _no_decoration, 'posters': _posters, 'rug': _rug, 'picture': _picture, 'drawers': _drawers,
    'books': _books, 'papers': _papers}
