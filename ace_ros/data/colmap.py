"""Reader of COLMAP sparse models: posed frames from cameras and images, text or binary.

::

    <scene>/images/<NAME>                  the images the model was reconstructed from
    <scene>/sparse/0/cameras.txt | .bin    CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]
    <scene>/sparse/0/images.txt | .bin     IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then
                                           a line of POINTS2D (not read)

The model may also sit in `<scene>/sparse/` (e.g. the output of COLMAP's image_undistorter)
or in `<scene>/` itself. As COLMAP does, the binary files are read when both kinds exist.
Only registered images (those in images.*) become frames, in NAME order.

Conventions converted here, stated once:
- COLMAP stores `cam_from_world` (x_cam = R x_world + t, quaternion w x y z, Hamilton);
  frames carry `world_from_cam`. COLMAP's camera axes are OpenCV's (x right, y down, z
  forward), so no axis change is needed.
- COLMAP puts the centre of the top-left pixel at (0.5, 0.5), OpenCV at (0, 0): the
  principal point moves by -0.5 px.
- Distorted models are undistorted with OpenCV to a pinhole image of the same size keeping
  the model's fx, fy, cx, cy (see `CAMERA_MODELS`); models OpenCV cannot undistort are
  refused when the source is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path
import struct
from typing import BinaryIO, Optional

import numpy as np
import numpy.typing as npt

from ace_ros.core.geometry import invert_pose, pose_from_translation_quaternion
from ace_ros.core.types import Frame
from ace_ros.data.base import FrameSource, image_size, lazy_image_frame, Undistorter

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: COLMAP camera models by binary id: (name, parameter count, focal lengths, lens), where lens
#: is 'opencv' (cv2.undistort's model: radial k1 k2 [k3..k6] and tangential p1 p2; COLMAP's
#: extra parameters are in OpenCV's order), 'fisheye' (cv2.fisheye's equidistant model with
#: k1..k4) or None (no OpenCV equivalent: refused).
CAMERA_MODELS: dict[int, tuple[str, int, int, Optional[str]]] = {
    0: ('SIMPLE_PINHOLE', 3, 1, 'opencv'),
    1: ('PINHOLE', 4, 2, 'opencv'),
    2: ('SIMPLE_RADIAL', 4, 1, 'opencv'),
    3: ('RADIAL', 5, 1, 'opencv'),
    4: ('OPENCV', 8, 2, 'opencv'),
    5: ('OPENCV_FISHEYE', 8, 2, 'fisheye'),
    6: ('FULL_OPENCV', 12, 2, 'opencv'),
    7: ('FOV', 5, 2, None),
    8: ('SIMPLE_RADIAL_FISHEYE', 4, 1, 'fisheye'),
    9: ('RADIAL_FISHEYE', 5, 1, 'fisheye'),
    10: ('THIN_PRISM_FISHEYE', 12, 2, None),
    11: ('RAD_TAN_THIN_PRISM_FISHEYE', 16, 2, None),
    12: ('SIMPLE_DIVISION', 4, 1, None),
    13: ('DIVISION', 5, 2, None),
    14: ('SIMPLE_FISHEYE', 3, 1, 'fisheye'),
    15: ('FISHEYE', 4, 2, 'fisheye'),
    16: ('EUCM', 6, 2, None),
    17: ('EQUIRECTANGULAR', 2, 0, None),
}
_MODEL_IDS = {name: model_id for model_id, (name, *_) in CAMERA_MODELS.items()}
SUPPORTED_MODELS = tuple(name for name, _, _, lens in CAMERA_MODELS.values() if lens)
MODEL_SUBFOLDERS = ('.', 'sparse/0', 'sparse')


@dataclass(frozen=True)
class ColmapCamera:
    """One COLMAP camera: `model` is a CAMERA_MODELS name, `params` in COLMAP's order."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class ColmapImage:
    """One registered image: `cam_from_world` (4, 4) and its file NAME under the image root."""

    image_id: int
    camera_id: int
    name: str
    cam_from_world: FloatArray


def find_colmap_model(path: str | Path) -> Optional[Path]:
    """The sparse model folder of `path` (itself, sparse/0 or sparse), or None if none."""
    for sub in MODEL_SUBFOLDERS:
        folder = Path(path) / sub
        if any((folder / f'cameras{ext}').is_file() and (folder / f'images{ext}').is_file()
               for ext in ('.bin', '.txt')):
            return folder
    return None


def is_colmap_model(path: str | Path) -> bool:
    """Whether `path` holds a COLMAP sparse model (see `find_colmap_model`)."""
    return Path(path).is_dir() and find_colmap_model(path) is not None


def read_colmap_model(folder: str | Path) -> tuple[dict[int, ColmapCamera], list[ColmapImage]]:
    """Cameras by id and registered images of a sparse model folder (binary preferred).

    Raises:
        ValueError: if the files are missing, truncated or malformed.
    """
    folder = Path(folder)
    if (folder / 'cameras.bin').is_file() and (folder / 'images.bin').is_file():
        return _read_cameras_bin(folder / 'cameras.bin'), _read_images_bin(folder / 'images.bin')
    if (folder / 'cameras.txt').is_file() and (folder / 'images.txt').is_file():
        return _read_cameras_txt(folder / 'cameras.txt'), _read_images_txt(folder / 'images.txt')
    raise ValueError(f'{folder}: no COLMAP model; expected cameras.bin + images.bin or '
                     'cameras.txt + images.txt')


def pinhole_from_camera(camera: ColmapCamera) -> tuple[FloatArray, FloatArray, bool]:
    """OpenCV (3, 3) K, distortion coefficients and fisheye flag of a camera.

    Raises:
        ValueError: for a model OpenCV cannot undistort, naming it.
    """
    _, _, n_focal, lens = CAMERA_MODELS[_MODEL_IDS[camera.model]]
    if lens is None:
        raise ValueError(f'camera {camera.camera_id} uses COLMAP model {camera.model}, which '
                         f'OpenCV cannot undistort; supported models: {SUPPORTED_MODELS}')
    params = np.array(camera.params, dtype=np.float64)
    fx, fy = (params[0], params[0]) if n_focal == 1 else (params[0], params[1])
    cx, cy = params[n_focal:n_focal + 2]
    K = np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])
    extra = params[n_focal + 2:]
    dist = np.zeros(max(4, extra.size))
    dist[:extra.size] = extra
    return K, dist, lens == 'fisheye'


class ColmapSource(FrameSource):
    """Frames of a COLMAP sparse model: registered images with their poses, undistorted.

    Args:
        root: the scene folder (holding images/ and sparse/0/), or the model folder itself.
        images: the image folder the model's NAMEs are relative to (relative paths are taken
            from `root`); by default the first `images/` found in `root`, the model folder or
            the two folders above it.

    Raises:
        ValueError: if there is no model or image folder, a camera's model cannot be
            undistorted, an image file is missing, or the model files are malformed.
    """

    def __init__(self, root: str | Path, images: Optional[str | Path] = None) -> None:
        root = Path(root)
        model = find_colmap_model(root)
        if model is None:
            raise ValueError(f'{root}: no COLMAP model in {list(MODEL_SUBFOLDERS)}; expected '
                             'cameras.bin + images.bin or cameras.txt + images.txt')
        cameras, registered = read_colmap_model(model)
        registered.sort(key=lambda image: image.name)
        if not registered:
            raise ValueError(f'{model}: the model has no registered images')
        self._undistorters: dict[int, Undistorter] = {}
        self._K: dict[int, FloatArray] = {}
        for camera_id in sorted({image.camera_id for image in registered}):
            if camera_id not in cameras:
                raise ValueError(f'{model}: images refer to camera {camera_id}, which is not '
                                 f'in the model (cameras {sorted(cameras)})')
            try:
                K, dist, fisheye = pinhole_from_camera(cameras[camera_id])
            except ValueError as exc:
                raise ValueError(f'{model}: {exc}') from exc
            self._K[camera_id] = K
            self._undistorters[camera_id] = Undistorter(K, dist, fisheye=fisheye)
        self.cameras = cameras
        image_root = _image_folder(root, model, images)
        self._images = registered
        self._paths = [image_root / image.name for image in registered]
        missing = [str(p) for p in self._paths if not p.is_file()]
        if missing:
            raise ValueError(f'{image_root}: {len(missing)} of the model\'s {len(self._paths)} '
                             f'images are missing, e.g. {missing[:3]}')
        # Frame names are file names without extension; sub-folders become '-' so that names
        # stay usable as file names (e.g. when written in ACE layout).
        names = [str(Path(image.name).with_suffix('')).replace('/', '-')
                 for image in registered]
        super().__init__(root, names, has_poses=True)
        self._world_from_cam = [invert_pose(image.cam_from_world) for image in registered]
        _logger.debug('opened COLMAP model %s: %d frames, %d cameras (%s), images in %s', model,
                      len(names), len(self._K), sorted({cameras[c].model for c in self._K}),
                      image_root)

    def _load(self, index: int) -> Frame:
        image_info = self._images[index]
        camera = self.cameras[image_info.camera_id]
        # The file is checked now (header), decoded and undistorted when used (LazyFrame).
        width, height = image_size(self._paths[index])
        if (width, height) != (camera.width, camera.height):
            raise ValueError(f'{self._paths[index]}: image is {width}x{height} but COLMAP '
                             f'camera {camera.camera_id} is {camera.width}x{camera.height}')
        undistort = self._undistorters[image_info.camera_id]
        return lazy_image_frame(self._paths[index], self.names[index],
                                self._K[image_info.camera_id].copy(),
                                self._world_from_cam[index].copy(),
                                rectify=undistort if undistort.distorted else None,
                                size=(width, height))


def _image_folder(root: Path, model: Path, images: Optional[str | Path]) -> Path:
    if images is not None:
        folder = Path(images) if Path(images).is_absolute() else root / images
        if not folder.is_dir():
            raise ValueError(f'{folder}: image folder not found')
        return folder
    candidates = [root / 'images', model / 'images', model.parent / 'images',
                  model.parent.parent / 'images']
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise ValueError(f'{root}: no images/ folder next to the COLMAP model; looked in '
                     f'{[str(c) for c in candidates]} (pass images=...)')


def _pose(values: list[float], where: str) -> FloatArray:
    """COLMAP's qw qx qy qz tx ty tz -> (4, 4) cam_from_world."""
    qw, qx, qy, qz, tx, ty, tz = values
    try:
        return pose_from_translation_quaternion([tx, ty, tz], [qx, qy, qz, qw])
    except ValueError as exc:
        raise ValueError(f'{where}: {exc}') from exc


def _camera(camera_id: int, model: str, width: int, height: int, params: list[float],
            where: str) -> ColmapCamera:
    if model not in _MODEL_IDS:
        raise ValueError(f'{where}: unknown COLMAP camera model {model!r}; known: '
                         f'{list(_MODEL_IDS)}')
    n_params = CAMERA_MODELS[_MODEL_IDS[model]][1]
    if len(params) != n_params:
        raise ValueError(f'{where}: model {model} takes {n_params} parameters, got '
                         f'{len(params)}')
    return ColmapCamera(camera_id, model, width, height, tuple(params))


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped line) of a text model file, '#' comment lines dropped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f'cannot read {path}: {exc}') from exc
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)
            if not line.lstrip().startswith('#')]


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for number, line in _data_lines(path):
        if not line:
            continue
        where = f'{path}:{number}'
        fields = line.split()
        try:
            camera_id, width, height = int(fields[0]), int(fields[2]), int(fields[3])
            params = [float(v) for v in fields[4:]]
        except (IndexError, ValueError) as exc:
            raise ValueError(f'{where}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[], got '
                             f'{line!r}') from exc
        cameras[camera_id] = _camera(camera_id, fields[1], width, height, params, where)
    return cameras


def _read_images_txt(path: Path) -> list[ColmapImage]:
    lines = _data_lines(path)
    images = []
    i = 0
    while i < len(lines):
        number, line = lines[i]
        if not line:
            i += 1
            continue
        # Two lines per image: the pose line, then POINTS2D (possibly empty), skipped.
        where = f'{path}:{number}'
        if i + 1 < len(lines) and len(lines[i + 1][1].split()) % 3:
            raise ValueError(f'{path}:{lines[i + 1][0]}: expected the POINTS2D line (X Y '
                             f'POINT3D_ID triplets, or empty) of the image above, got '
                             f'{lines[i + 1][1][:80]!r}')
        i += 2
        fields = line.split(maxsplit=9)
        try:
            image_id, camera_id = int(fields[0]), int(fields[8])
            values = [float(v) for v in fields[1:8]]
            name = fields[9]
        except (IndexError, ValueError) as exc:
            raise ValueError(f'{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, '
                             f'got {line!r}') from exc
        images.append(ColmapImage(image_id, camera_id, name, _pose(values, where)))
    return images


# The binary files are parsed here with struct, by hand: pycolmap (a large compiled
# dependency) is the only maintained reader, and the layout is small and documented
# (little endian; https://colmap.github.io/format.html).

def _unpack(stream: BinaryIO, fmt: str, path: Path) -> tuple[int | float, ...]:
    """The values of struct format `fmt` read from `stream`: ints for its integer codes
    (I, i, Q), floats for d; ValueError naming `path` where the file ends first."""
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise ValueError(f'{path}: truncated at byte {stream.tell()} (wanted {size} more bytes)')
    return struct.unpack(fmt, data)


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    with path.open('rb') as stream:
        (count,) = _unpack(stream, '<Q', path)
        for _ in range(count):
            camera_id, model_id, width, height = _unpack(stream, '<IiQQ', path)
            if model_id not in CAMERA_MODELS:
                raise ValueError(f'{path}: camera {camera_id} has unknown COLMAP model id '
                                 f'{model_id}; known: {sorted(CAMERA_MODELS)}')
            name, n_params, _, _ = CAMERA_MODELS[model_id]
            params = list(_unpack(stream, f'<{n_params}d', path))
            cameras[camera_id] = _camera(camera_id, name, width, height, params, str(path))
    return cameras


def _read_images_bin(path: Path) -> list[ColmapImage]:
    images = []
    with path.open('rb') as stream:
        (count,) = _unpack(stream, '<Q', path)
        for _ in range(count):
            image_id, *values, camera_id = _unpack(stream, '<I7dI', path)
            name = bytearray()
            while (char := stream.read(1)) != b'\0':
                if not char:
                    raise ValueError(f'{path}: truncated inside the name of image {image_id}')
                name += char
            (n_points,) = _unpack(stream, '<Q', path)
            # POINTS2D: x, y (double) and POINT3D_ID (int64) each; not needed here.
            stream.seek(24 * n_points, 1)
            where = f'{path}: image {image_id}'
            images.append(ColmapImage(image_id, camera_id, name.decode('utf-8'),
                                      _pose(values, where)))
        # Seeking past the points does not notice the end of the file, so compare here.
        position, size = stream.tell(), path.stat().st_size
        if position != size:
            raise ValueError(f'{path}: {count} images end at byte {position} but the file has '
                             f'{size} bytes ({"truncated" if position > size else "extra data"})')
    return images
