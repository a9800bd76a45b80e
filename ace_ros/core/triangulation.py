"""Sparse 3D points of the mapping frames, triangulated from matched features and known poses.

Why: the reprojection loss alone starts from nothing and needs thousands of iterations
before a head's predictions agree between views of a room; a few hundred points per image
with known world coordinates turn the first part of training into plain regression, which a
2-core CPU can afford (issue 13). OpenCV does the feature work (SIFT, matching,
triangulation); the poses are the mapping poses, so no structure from motion is needed: a
match is kept only if it lies on its epipolar line, triangulates in front of both cameras,
reprojects within `max_reprojection_px` and has enough parallax to fix its depth.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import numpy.typing as npt
import torch

from ace_ros.core import geometry
from ace_ros.core.types import Frame

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TriangulationSettings:
    """How partners are chosen and which matches become points."""

    features_per_image: int = 1500
    partners: int = 3               # partner frames per frame (each pair is matched once)
    max_axis_angle_deg: float = 35.0  # optical axes further apart rarely share features
    min_baseline_m: float = 0.02
    preferred_baseline_m: float = 0.15
    min_overlap: float = 0.6        # of the view, see `view_overlap`
    ratio: float = 0.8              # Lowe's ratio test
    max_epipolar_px: float = 1.5    # Sampson distance to the epipolar line
    max_reprojection_px: float = 1.5
    min_parallax_deg: float = 2.0   # below it depth is too uncertain to supervise
    # A pair whose matches mostly miss their epipolar lines has poses that do not fit its
    # images to the pixel (TUM fr1/rpy's fast turns: 2-5 px); its few survivors are chance.
    min_epipolar_inlier_share: float = 0.3
    image_height: int = 480         # features are detected at this height (as encoded)


@dataclass
class FramePoints:
    """Triangulated points of one frame: `pixels` (N, 2) in the frame's own image
    coordinates and `world` (N, 3) the points they see."""

    pixels: npt.NDArray[np.float32]
    world: npt.NDArray[np.float32]


@dataclass
class TriangulationResult:
    points: List[FramePoints]   # one per input frame, in order
    pairs: int
    seconds: float

    @property
    def total(self) -> int:
        return sum(len(p.world) for p in self.points)


def _camera_centres_and_axes(frames: Sequence[Frame]) -> Tuple[np.ndarray, np.ndarray]:
    poses = np.stack([f.world_from_cam for f in frames])
    return poses[:, :3, 3], poses[:, :3, 2]


def view_overlap(a: Frame, b: Frame, depths: Sequence[float] = (1.0, 2.0, 4.0)) -> float:
    """Share of a 5x5 grid of `a`'s pixels, placed at typical indoor `depths`, that `b` sees
    in its image: a cheap, scene-free stand-in for how many features two views share."""
    return float(view_overlaps(a, [b], depths)[0])


def view_overlaps(a: Frame, others: Sequence[Frame],
                  depths: Sequence[float] = (1.0, 2.0, 4.0)) -> npt.NDArray[np.float64]:
    """`view_overlap` of `a` with each of `others`, in one vectorised pass (pair selection
    asks it for every frame against every other: 500 frames took 15 s one pair at a time)."""
    if not len(others):
        return np.zeros(0)
    u, v = np.meshgrid(np.linspace(0.1, 0.9, 5) * a.width, np.linspace(0.1, 0.9, 5) * a.height)
    rays = np.linalg.solve(a.K, np.stack([u.ravel(), v.ravel(), np.ones(u.size)]))
    points_a = np.concatenate([rays * d for d in depths], axis=1)  # (3, P)
    world = a.world_from_cam[:3, :3] @ points_a + a.world_from_cam[:3, 3:4]
    poses = np.stack([f.world_from_cam for f in others])  # (N, 4, 4) world_from_cam
    R_t = np.transpose(poses[:, :3, :3], (0, 2, 1))  # cam_from_world rotations
    points_b = R_t @ (world[None] - poses[:, :3, 3:4])  # (N, 3, P)
    K = np.stack([f.K for f in others])
    proj = K @ points_b
    uv = proj[:, :2] / np.maximum(proj[:, 2:3], 1e-9)
    size = np.array([[f.width, f.height] for f in others], np.float64)[:, :, None]
    seen = (points_b[:, 2] > 0.1) & np.all((uv >= 0) & (uv < size), axis=1)
    return seen.mean(axis=1)


def choose_pairs(frames: Sequence[Frame], settings: TriangulationSettings) -> List[tuple]:
    """(i, j) pairs with i < j, no duplicates: for each frame up to `partners` frames that
    see most of its view (`min_overlap`) from a baseline of at least `min_baseline_m`,
    preferring baselines near `preferred_baseline_m` (wider fixes depth better, narrower
    matches more features)."""
    centres, axes = _camera_centres_and_axes(frames)
    cos_max = np.cos(np.radians(settings.max_axis_angle_deg))
    pairs = set()
    for i in range(len(frames)):
        baseline = np.linalg.norm(centres - centres[i], axis=1)
        ok = ((axes @ axes[i]) >= cos_max) & (baseline >= settings.min_baseline_m)
        ok[i] = False
        near = np.nonzero(ok)[0]
        overlap = view_overlaps(frames[i], [frames[j] for j in near])
        candidates = near[overlap >= settings.min_overlap]
        if not len(candidates):
            continue
        score = np.abs(np.log(baseline[candidates] / settings.preferred_baseline_m))
        for j in candidates[np.argsort(score)[:settings.partners]]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _detect(frame: Frame, sift: cv2.SIFT, height: int) -> Tuple[np.ndarray, np.ndarray]:
    scale = height / frame.height
    width = int(round(frame.width * scale))
    gray = cv2.cvtColor(cv2.resize(frame.image, (width, height), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)
    keypoints, descriptors = sift.detectAndCompute(gray, None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    pts = np.array([k.pt for k in keypoints], np.float32)
    # Back to the frame's own pixel coordinates (OpenCV's pixel-centre convention).
    pts = (pts + 0.5) / scale - 0.5
    # OpenCV's SIFT values are whole numbers in 0..255 stored as float32: kept as uint8 (a
    # quarter of the memory while every frame's features wait for matching), exactly.
    return pts, descriptors.astype(np.uint8)


def _projection(frame: Frame) -> FloatArray:
    return frame.K @ geometry.invert_pose(frame.world_from_cam)[:3]


def _sampson(F: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    ah = np.hstack([a, np.ones((len(a), 1))])
    bh = np.hstack([b, np.ones((len(b), 1))])
    Fa = ah @ F.T
    Ftb = bh @ F
    num = np.einsum('ij,ij->i', bh, Fa) ** 2
    den = Fa[:, 0] ** 2 + Fa[:, 1] ** 2 + Ftb[:, 0] ** 2 + Ftb[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-12))


def _fundamental(fa: Frame, fb: Frame) -> FloatArray:
    b_from_a = geometry.invert_pose(fb.world_from_cam) @ fa.world_from_cam
    R, t = b_from_a[:3, :3], b_from_a[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(fb.K).T @ tx @ R @ np.linalg.inv(fa.K)


def _triangulate_pair(fa: Frame, fb: Frame, pa: np.ndarray, pb: np.ndarray,
                      settings: TriangulationSettings) -> Tuple[np.ndarray, np.ndarray]:
    """Keeps matches that pass the epipolar, depth, reprojection and parallax checks;
    returns (mask over the matches, (N, 3) world points of the kept ones)."""
    keep = _sampson(_fundamental(fa, fb), pa.astype(np.float64),
                    pb.astype(np.float64)) < settings.max_epipolar_px
    if keep.mean() < settings.min_epipolar_inlier_share:
        keep[:] = False
    if not keep.any():
        return keep, np.zeros((0, 3))
    Pa, Pb = _projection(fa), _projection(fb)
    X = cv2.triangulatePoints(Pa, Pb, pa[keep].T.astype(np.float64),
                              pb[keep].T.astype(np.float64))
    X = (X[:3] / X[3]).T
    ok = np.ones(len(X), bool)
    for frame, P, pix in ((fa, Pa, pa[keep]), (fb, Pb, pb[keep])):
        cam = geometry.transform_points(geometry.invert_pose(frame.world_from_cam), X)
        proj = (P @ np.hstack([X, np.ones((len(X), 1))]).T).T
        uv = proj[:, :2] / np.maximum(proj[:, 2:3], 1e-9)
        reprojection = np.linalg.norm(uv - pix, axis=1)
        ok &= (cam[:, 2] > 0.05) & (reprojection < settings.max_reprojection_px)
    ray_a = X - fa.world_from_cam[:3, 3]
    ray_b = X - fb.world_from_cam[:3, 3]
    cos = np.einsum('ij,ij->i', ray_a, ray_b) / np.maximum(
        np.linalg.norm(ray_a, axis=1) * np.linalg.norm(ray_b, axis=1), 1e-12)
    ok &= cos < np.cos(np.radians(settings.min_parallax_deg))
    mask = np.zeros(len(pa), bool)
    mask[np.nonzero(keep)[0][ok]] = True
    return mask, X[ok]


def triangulate_frames(frames: Sequence[Frame],
                       settings: TriangulationSettings = TriangulationSettings(),
                       should_stop: Optional[Callable[[], bool]] = None
                       ) -> TriangulationResult:
    """Triangulated points for each posed frame (frames without a pose get none).

    A keypoint triangulated from several partners keeps the point of the widest-parallax
    pair (the first found, for simplicity: partners are ranked by baseline already).
    `should_stop` is polled between frames and pairs (a time budget, cancellation): what was
    found so far is returned.
    """
    start = time.perf_counter()
    empty = FramePoints(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32))
    posed = [i for i, f in enumerate(frames) if f.world_from_cam is not None]
    points: List[FramePoints] = [empty] * len(frames)
    if len(posed) < 2:
        return TriangulationResult(points, 0, time.perf_counter() - start)
    sub = [frames[i] for i in posed]
    pairs = choose_pairs(sub, settings)
    stopped = should_stop if should_stop is not None else (lambda: False)
    local = threading.local()  # one SIFT and one matcher per worker thread

    def detect(k: int) -> Optional[tuple]:
        if stopped():
            return None
        if not hasattr(local, 'sift'):
            local.sift = cv2.SIFT_create(nfeatures=settings.features_per_image)
        return _detect(sub[k], local.sift, settings.image_height)

    def match(pair: tuple) -> Optional[tuple]:
        i, j = pair
        if stopped() or features.get(i) is None or features.get(j) is None:
            return None
        (pts_a, desc_a), (pts_b, desc_b) = features[i], features[j]
        if len(desc_a) < 2 or len(desc_b) < 2:
            return None
        if not hasattr(local, 'matcher'):
            local.matcher = cv2.BFMatcher(cv2.NORM_L2)
        # Matched as float32: OpenCV's L2 matcher is ~4x faster on float than on uint8 rows.
        good = [m[0] for m in local.matcher.knnMatch(desc_a.astype(np.float32),
                                                     desc_b.astype(np.float32), k=2)
                if len(m) == 2 and m[0].distance < settings.ratio * m[1].distance]
        if not good:
            return None
        ia = np.array([m.queryIdx for m in good])
        ib = np.array([m.trainIdx for m in good])
        mask, X = _triangulate_pair(sub[i], sub[j], pts_a[ia], pts_b[ib], settings)
        return ia[mask], ib[mask], X

    # OpenCV's SIFT runs mostly on one core; a worker per core detects (and matches) ~2x
    # faster on 2 cores than OpenCV's own threads (500 frames: 46 s -> 21 s on 2 AVX2 cores).
    # Results are merged in pair order, so the points do not depend on the thread timing.
    used = sorted({k for pair in pairs for k in pair})
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(_workers()) as pool:
            features = dict(zip(used, pool.map(detect, used)))
            matched = list(pool.map(match, pairs))
    finally:
        cv2.setNumThreads(cv_threads)
    found: List[dict] = [dict() for _ in sub]  # keypoint index -> world point
    done_pairs = 0
    for (i, j), result in zip(pairs, matched):
        if result is None:
            continue
        for a, b, x in zip(*result):
            found[i].setdefault(int(a), x)
            found[j].setdefault(int(b), x)
        done_pairs += 1
    for k, table in enumerate(found):
        if table:
            idx = np.fromiter(table.keys(), int)
            points[posed[k]] = FramePoints(features[k][0][idx].astype(np.float32),
                                           np.stack(list(table.values())).astype(np.float32))
    result = TriangulationResult(points, done_pairs, time.perf_counter() - start)
    _logger.info('triangulated %d points in %d of %d frames from %d image pairs (%.1f s)',
                 result.total, sum(len(p.world) > 0 for p in points), len(frames),
                 done_pairs, result.seconds)
    return result


def _workers() -> int:
    """Threads for feature work: as many as torch computes with (the process's one thread
    setting: OMP_NUM_THREADS, or the cores it may use)."""
    return max(1, torch.get_num_threads())
