"""DSAC*-style PnP-RANSAC: (N, 2) pixels + (N, 3) scene coordinates -> camera pose.

As in ACE's test-time RANSAC (ACE_NOTES.md, "Localization"): hypotheses from 4 random
correspondences (P3P on 3, the 4th must agree), scored by a soft inlier count over all
correspondences, the best one refined by iterative PnP on its inliers while the inlier set grows.

P3P is solved here in numpy, batched over thousands of 4-tuples (~2 us each), not with
`cv2.solveP3P` (~150 us a call): at 70 % outliers ~10000 tuples are drawn for 64 hypotheses.
The test suite checks `solve_p3p` against `cv2.solveP3P`. Only the final refinement uses
OpenCV (`cv2.solvePnP`, SOLVEPNP_ITERATIVE), so K must not have skew, which OpenCV ignores.
`ransac_torch` is the same RANSAC in torch, for a GPU; the P3P algebra here serves both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Optional, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from ace_ros.core import geometry

_logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class RansacSettings:
    """Test-time RANSAC settings; the first five defaults are ACE's (ACE_NOTES.md). Fields
    that `LocalizationConfig` also has carry its names, so a localizer takes them from its
    settings (`from_config`).

    Attributes:
        ransac_hypotheses: number of valid pose hypotheses to score.
        inlier_threshold_px: reprojection error below which a correspondence is an inlier.
        max_reprojection_px: errors are clamped here when scoring, so that far outliers and
            points behind the camera all cost the same.
        soft_inlier_sharpness: beta * inlier_threshold_px of the soft inlier score
            sum(1 - sigmoid(beta * (err - threshold))); 5 gives 0.99 at zero error and 0.007 at
            twice the threshold, independent of the threshold's scale.
        refinement_iterations: at most this many PnP refinements of the best hypothesis.
        ransac_max_tries: at most this many random 4-tuples in total; if fewer than
            `ransac_hypotheses` are valid by then, the valid ones found are scored.
        min_inliers: a pose with fewer inliers after refinement is a failure; random
            correspondences reach ~10-20 inliers of 4800 by chance.
        min_depth: metres; a point closer to (or behind) the camera is never an inlier.
        max_depth: metres; a point farther away is never an inlier.
        confidence_inliers: inlier count at which `RansacResult.confidence` reaches 1 - 1/e.
    """

    ransac_hypotheses: int = 64
    inlier_threshold_px: float = 10.0
    max_reprojection_px: float = 100.0
    soft_inlier_sharpness: float = 5.0
    refinement_iterations: int = 100
    ransac_max_tries: int = 100_000
    min_inliers: int = 50
    min_depth: float = 0.1
    max_depth: float = 1000.0
    confidence_inliers: float = 500.0

    @classmethod
    def from_config(cls, cfg: object) -> 'RansacSettings':
        """The settings a localization config (`LocalizationConfig`) gives: each field it
        has by the same name; ACE's defaults for the rest."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})

    def __post_init__(self) -> None:
        for name in ('ransac_hypotheses', 'ransac_max_tries', 'inlier_threshold_px',
                     'soft_inlier_sharpness', 'min_depth', 'confidence_inliers'):
            if not getattr(self, name) > 0:
                raise ValueError(f'{name} must be > 0, got {getattr(self, name)}')
        if self.refinement_iterations < 0:
            raise ValueError('refinement_iterations must be >= 0, got '
                             f'{self.refinement_iterations}')
        if self.min_inliers < 4:
            raise ValueError(f'min_inliers must be >= 4 (PnP needs 4), got {self.min_inliers}')
        if not self.max_reprojection_px > self.inlier_threshold_px:
            raise ValueError(f'max_reprojection_px must be > inlier_threshold_px '
                             f'({self.inlier_threshold_px}), got {self.max_reprojection_px}')
        if not self.max_depth > self.min_depth:
            raise ValueError(f'max_depth must be > min_depth ({self.min_depth}), '
                             f'got {self.max_depth}')


@dataclass(frozen=True, eq=False)
class RansacResult:
    """Outcome of `ransac_pnp` and `ransac_torch.ransac_pnp_torch`; a failure is a result,
    not an exception.

    Attributes:
        success: whether a pose with at least `min_inliers` inliers was found.
        world_from_cam: (4, 4) float64 camera-to-world pose; identity when failed.
        cam_from_world: (4, 4) float64 inverse of `world_from_cam`; identity when failed.
        inlier_count: inliers of the returned pose, or of the best pose tried when failed.
        inlier_mask: (N,) bool over the input correspondences (non-finite ones are False);
            on failure, the mask of the best pose tried.
        n_correspondences: N, including non-finite ones.
        score: soft inlier count of the best hypothesis before refinement (0 if none).
        confidence: 1 - exp(-inlier_count / confidence_inliers) on success, 0 when failed.
            It grows with the inlier count, not the inlier ratio: the pose's uncertainty
            shrinks with the number of consistent constraints, whereas the ratio drops for
            frames with much sky or texture-less surface even when the pose is good.
        reason: '' on success, otherwise why it failed.
    """

    success: bool
    world_from_cam: FloatArray
    cam_from_world: FloatArray
    inlier_count: int
    inlier_mask: BoolArray
    n_correspondences: int
    score: float
    confidence: float
    reason: str = ''


def _polymul(a: FloatArray, b: FloatArray, xp=np) -> FloatArray:
    """Batched product of (M, n) and (M, m) ascending coefficient arrays (numpy or torch:
    `xp` is the array module)."""
    n, m = a.shape[1], b.shape[1]
    return xp.stack([sum(a[:, i] * b[:, k - i]
                         for i in range(max(0, k - m + 1), min(k, n - 1) + 1))
                     for k in range(n + m - 1)], axis=1)


def _quartic_real_roots(coeffs: FloatArray, xp=np) -> Tuple[FloatArray, BoolArray]:
    """Real roots of (M, 5) ascending quartic coefficients by Ferrari's method.

    `xp` is the array module: numpy, or for torch tensors a namespace with numpy's names
    (`ransac_torch`).

    Returns:
        roots (M, 4) and real (M, 4) bool; non-real or degenerate entries are not real.
    """
    a3, a2, a1, a0 = (coeffs[:, i] / coeffs[:, 4] for i in (3, 2, 1, 0))
    # Depressed quartic y^4 + p y^2 + q y + r with x = y - a3 / 4.
    p = a2 - 3 * a3 ** 2 / 8
    q = a1 - a3 * a2 / 2 + a3 ** 3 / 8
    r = a0 - a3 * a1 / 4 + a3 ** 2 * a2 / 16 - 3 * a3 ** 4 / 256
    # A root m > 0 of the resolvent m^3 + p m^2 + (p^2/4 - r) m - q^2/8 makes the quartic a
    # difference of squares; it is the largest real root, found as z - p / 3 of the depressed
    # cubic z^3 + P z + Q (Cardano with one real root, else the trigonometric form).
    P, Q = -p ** 2 / 12 - r, -p ** 3 / 108 + p * r / 3 - q ** 2 / 8
    disc = Q ** 2 / 4 + P ** 3 / 27
    sqrt_disc = xp.sqrt(xp.clip(disc, 0, None))
    cardano = xp.cbrt(-Q / 2 + sqrt_disc) + xp.cbrt(-Q / 2 - sqrt_disc)
    ratio = xp.clip(1.5 * Q / P * xp.sqrt(-3 / xp.clip(P, None, -1e-300)), -1, 1)
    trig = 2 * xp.sqrt(xp.clip(-P / 3, 0, None)) * xp.cos(xp.arccos(ratio) / 3)
    m = xp.where(disc >= 0, cardano, trig) - p / 3
    s = xp.sqrt(2 * m)
    roots, real = [], []
    for sign in (1.0, -1.0):
        # y^2 -+ s y + p/2 + m +- q / (2 s) = 0, two roots each.
        half_b = -sign * s / 2
        c = p / 2 + m + sign * (q / (2 * s))
        d = half_b ** 2 - c
        for root in (-half_b + xp.sqrt(xp.abs(d)), -half_b - xp.sqrt(xp.abs(d))):
            roots.append(root - a3 / 4)
            real.append((d >= -1e-9 * (1 + half_b ** 2 + xp.abs(c))) & xp.isfinite(roots[-1]))
    return xp.stack(roots, axis=1), xp.stack(real, axis=1)


def _triangle_frames(points: FloatArray, xp=np) -> Tuple[FloatArray, BoolArray]:
    """(..., 3, 3) triangles (rows = points) -> (..., 3, 3) orthonormal frames (columns),
    valid (...); `xp` as for `_quartic_real_roots`."""
    d1 = points[..., 1, :] - points[..., 0, :]
    d2 = points[..., 2, :] - points[..., 0, :]
    normal = xp.cross(d1, d2)
    len1, len2, area = (xp.sqrt((v * v).sum(axis=-1)) for v in (d1, d2, normal))
    # sin(angle at the first vertex) > 1e-4: rejects identical and (near-)collinear points.
    ok = xp.isfinite(area) & (area > 1e-4 * len1 * len2) & (len1 > 0)
    e1 = d1 / len1[..., None]
    e3 = normal / area[..., None]
    return xp.stack([e1, xp.cross(e3, e1), e3], axis=-1), ok


def p3p_depths(rays: FloatArray, points_world: FloatArray, xp=np
               ) -> Tuple[FloatArray, BoolArray]:
    """The camera-frame depths of P3P's (up to 4) solutions, by Grunert's distance
    formulation with the quartic solved in closed form.

    Args:
        rays: (M, 3, 3) unit bearing vectors in the camera frame, one per row.
        points_world: (M, 3, 3) the matching world points, one per row.
        xp: the array module (numpy, or `ransac_torch`'s namespace for torch tensors).

    Returns:
        depths (M, 4, 3) of the three points for each root and valid (M, 4): the root is real
        and all depths are positive and finite. Non-finite values warn in numpy.
    """
    p = points_world
    a2, b2, c2 = (((p[:, i] - p[:, j]) ** 2).sum(axis=1) for i, j in ((1, 2), (0, 2), (0, 1)))
    cos_a, cos_b, cos_g = ((rays[:, i] * rays[:, j]).sum(axis=1)
                           for i, j in ((1, 2), (0, 2), (0, 1)))
    # Depths s2 = u s1, s3 = v s1: the law of cosines gives u = num(v) / den(v) and a
    # quartic in v (ascending coefficients).
    r, k = (a2 - c2) / b2, c2 / b2
    num = xp.stack([r + 1, -2 * r * cos_b, r - 1], axis=1)
    den = xp.stack([2 * cos_g, -2 * cos_a], axis=1)
    quartic = _polymul(_polymul(den, den, xp), xp.stack([1 - k, 2 * k * cos_b, -k], axis=1), xp)
    quartic = quartic + _polymul(num, num, xp)
    quartic[:, :4] -= 2 * cos_g[:, None] * _polymul(num, den, xp)
    v, real = _quartic_real_roots(quartic, xp)
    u = (num[:, :1] + num[:, 1:2] * v + num[:, 2:] * v ** 2) / (den[:, :1] + den[:, 1:] * v)
    s1 = xp.sqrt(c2[:, None] / (1 + u ** 2 - 2 * u * cos_g[:, None]))
    valid = real & (u > 0) & (v > 0) & (s1 > 0) & xp.isfinite(u * v * s1)
    return s1[..., None] * xp.stack([xp.ones_like(s1), u, v], axis=-1), valid


def solve_p3p(rays: FloatArray, points_world: FloatArray
              ) -> Tuple[FloatArray, FloatArray, npt.NDArray[np.intp]]:
    """Batched P3P: Grunert's distance formulation, quartic solved in closed form.

    Args:
        rays: (M, 3, 3) unit bearing vectors in the camera frame, one per row.
        points_world: (M, 3, 3) the matching world points, one per row.

    Returns:
        rotation (S, 3, 3) and translation (S, 3) of all S `cam_from_world` solutions with
        positive depths (up to 4 per triplet), and (S,) the triplet each solution belongs to.
    """
    p = points_world
    with np.errstate(all='ignore'):
        depths, valid = p3p_depths(rays, p)
        sample, root = np.nonzero(valid)
        points_cam = depths[sample, root, :, None] * rays[sample]  # (S, 3, 3)
        frame_world, ok_world = _triangle_frames(p)
        frame_cam, ok_cam = _triangle_frames(points_cam)
    ok = ok_cam & ok_world[sample]
    sample, points_cam = sample[ok], points_cam[ok]
    rotation = frame_cam[ok] @ np.swapaxes(frame_world[sample], 1, 2)
    translation = points_cam.mean(1) - np.einsum('sij,sj->si', rotation, p[sample].mean(1))
    return rotation, translation, sample


def _reprojection_errors(rotation: FloatArray, translation: FloatArray,
                         points_world: FloatArray, pixels: FloatArray, K: FloatArray,
                         settings: RansacSettings) -> npt.NDArray[np.float32]:
    """(H, 3, 3) rotations, (H, 3) translations -> (H, N) clamped reprojection errors in px.

    A point outside [min_depth, max_depth] gets max_reprojection_px. float32 with the points
    along the last axis is several times faster than float64; centring the points keeps
    float32 precise for scenes far from the world origin.
    """
    n_poses, centre = len(rotation), points_world.mean(axis=0)
    translation = translation + rotation @ centre
    projection = K @ np.concatenate([rotation, translation[:, :, None]], axis=2)  # (H, 3, 4)
    projection = projection.reshape(3 * n_poses, 4).astype(np.float32)
    points = (points_world - centre).T.astype(np.float32)
    # Multiply-adds, not a matmul: a multi-threaded BLAS is ~10x slower for this shape on a
    # small, shared CPU. In place: temporaries of this size cost page faults on every call.
    uvw = np.multiply(projection[:, :1], points[0])  # (3H, N)
    scratch = np.empty_like(uvw)
    for i in (1, 2):
        uvw += np.multiply(projection[:, i:i + 1], points[i], out=scratch)
    uvw += projection[:, 3:]
    uvw = uvw.reshape(n_poses, 3, -1)
    u, v, depth = uvw[:, 0], uvw[:, 1], uvw[:, 2]  # K's last row is (0, 0, 1): w is depth
    with np.errstate(all='ignore'):
        for coord, pixel in ((u, pixels[:, 0]), (v, pixels[:, 1])):
            np.divide(coord, depth, out=coord)
            coord -= pixel.astype(np.float32)
            np.square(coord, out=coord)
        u += v
        error = np.sqrt(u, out=u)
    usable = (depth >= settings.min_depth) & (depth <= settings.max_depth) & (error == error)
    return np.where(usable, np.minimum(error, settings.max_reprojection_px, out=error),
                    np.float32(settings.max_reprojection_px))


def coherent_cells(points_grid: FloatArray, fraction: float) -> BoolArray:
    """The `fraction` of an image's cells whose scene coordinates agree best with their
    image neighbours, as a flat row-major (H * W,) mask.

    A regression head's outliers are spatially incoherent, while neighbouring correct cells
    predict nearby points. A cell's score is the distance to its second-nearest of the four
    neighbours' points (two agreeing neighbours, so a lone chance agreement does not count).
    Drawing minimal sets from the best 30 % doubles the inlier ratio on the TUM split (11 % to
    22 % median), i.e. ~16x more all-inlier 4-tuples (benchmarks/RESULTS.md).

    Args:
        points_grid: (H, W, 3) scene coordinates; non-finite cells are never chosen.
        fraction: in (0, 1]; 1 keeps every finite cell.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    geometry.check_shape(points_grid, (None, None, 3), 'points_grid')
    h, w, _ = points_grid.shape
    finite = np.isfinite(points_grid).all(axis=2).ravel()
    if fraction == 1.0 or h < 2 or w < 2:
        return finite
    distance = np.full((h, w, 4), np.inf)
    with np.errstate(invalid='ignore'):
        horizontal = np.linalg.norm(points_grid[:, 1:] - points_grid[:, :-1], axis=2)
        vertical = np.linalg.norm(points_grid[1:] - points_grid[:-1], axis=2)
    distance[:, 1:, 0] = distance[:, :-1, 1] = horizontal
    distance[1:, :, 2] = distance[:-1, :, 3] = vertical
    score = np.partition(np.nan_to_num(distance, nan=np.inf), 1, axis=2)[..., 1].ravel()
    score[~finite] = np.inf
    keep = max(4, int(round(fraction * finite.sum())))
    mask = np.zeros(h * w, dtype=bool)
    mask[np.argsort(score, kind='stable')[:keep]] = True
    return mask & finite


def _sample_hypotheses(rays: FloatArray, points_world: FloatArray, pixels: FloatArray,
                       K: FloatArray, settings: RansacSettings, rng: np.random.Generator
                       ) -> Tuple[FloatArray, FloatArray, int]:
    """Draw 4-tuples in batches until `hypotheses` of them are consistent, or tries run out.

    A P3P solution of the first 3 points is consistent when all 4 points lie within
    [min_depth, max_depth] and reproject within the inlier threshold; the 4th point's error
    also picks the best of the up to 4 solutions.

    Returns:
        rotation (H, 3, 3), translation (H, 3) `cam_from_world` hypotheses (H may be 0), and
        the number of 4-tuples drawn.
    """
    n, wanted = len(points_world), settings.ransac_hypotheses
    rotations, translations = [], []
    found = tries = 0
    batch = 4 * wanted
    while found < wanted and tries < settings.ransac_max_tries:
        batch = min(batch, settings.ransac_max_tries - tries)
        idx = rng.integers(0, n, size=(batch, 4))
        tries += batch
        idx = idx[(idx[:, [0, 0, 0, 1, 1, 2]] != idx[:, [1, 2, 3, 2, 3, 3]]).all(axis=1)]
        rotation, translation, sample = solve_p3p(rays[idx[:, :3]], points_world[idx[:, :3]])
        uvw = (points_world[idx[sample]] @ np.swapaxes(rotation, 1, 2)
               + translation[:, None]) @ K.T  # (S, 4, 3); w is the depth
        with np.errstate(all='ignore'):
            error = np.linalg.norm(uvw[..., :2] / uvw[..., 2:] - pixels[idx[sample]], axis=2)
        ok = ((error < settings.inlier_threshold_px) & (uvw[..., 2] >= settings.min_depth)
              & (uvw[..., 2] <= settings.max_depth)).all(axis=1)
        sample, error = sample[ok], error[ok, 3]
        order = np.lexsort((error, sample))
        first = order[np.unique(sample[order], return_index=True)[1]][:wanted - found]
        rotations.append(rotation[ok][first])
        translations.append(translation[ok][first])
        found += len(first)
        # Size the next batch from the acceptance rate so far (at least 1 in 1000 assumed).
        rate = max(found / tries, 1e-3)
        batch = int(np.clip(1.2 * (wanted - found) / rate, 64, 8192))
    return np.concatenate(rotations), np.concatenate(translations), tries


def _refine(cam_from_world: FloatArray, points_world: FloatArray, pixels: FloatArray,
            K: FloatArray, settings: RansacSettings) -> Tuple[FloatArray, BoolArray]:
    """Refine a pose by iterative PnP on its inliers, repeated while the inlier set grows.

    Returns:
        (4, 4) refined `cam_from_world` and its (N,) inlier mask.
    """
    def inliers(pose: FloatArray) -> BoolArray:
        error = _reprojection_errors(pose[None, :3, :3], pose[None, :3, 3], points_world,
                                     pixels, K, settings)
        return error[0] < settings.inlier_threshold_px

    mask = inliers(cam_from_world)
    for _ in range(settings.refinement_iterations):
        if mask.sum() < 4:
            break
        rvec = cv2.Rodrigues(cam_from_world[:3, :3])[0]
        tvec = cam_from_world[:3, 3].reshape(3, 1).copy()
        try:
            ok, rvec, tvec = cv2.solvePnP(points_world[mask], pixels[mask], K, None, rvec, tvec,
                                          useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        except cv2.error as error:  # degenerate inlier sets (e.g. all collinear)
            _logger.debug('PnP refinement failed: %s', error)
            break
        if not ok or not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
            break
        refined = geometry.make_pose(cv2.Rodrigues(rvec)[0], tvec)
        refined_mask = inliers(refined)
        if refined_mask.sum() < mask.sum():
            break
        grew = refined_mask.sum() > mask.sum()
        cam_from_world, mask = refined, refined_mask
        if not grew:
            break
    return cam_from_world, mask


def check_intrinsics(K: FloatArray) -> None:
    """Raise ValueError unless `K` is a (3, 3) pinhole matrix without skew, fx, fy > 0."""
    geometry.check_shape(K, (3, 3), 'K')
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0
            and np.array_equal(K.ravel()[[1, 3, 6, 7, 8]], [0.0, 0.0, 0.0, 0.0, 1.0])):
        # OpenCV's PnP ignores skew, so a skewed K would be silently wrong.
        raise ValueError(f'K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0, '
                         f'got {K.tolist()}')


def make_result(reason: str, settings: RansacSettings, n_total: int,
                index: npt.NDArray[np.intp], cam_from_world: FloatArray | None = None,
                mask: BoolArray | None = None, score: float = 0.0) -> RansacResult:
    """The `RansacResult` of a pose found on the correspondences `index` (of `n_total`).

    Args:
        reason: '' for a success, else why it failed (the pose is then identity).
        mask: (len(index),) the inliers among the correspondences used, or None.
    """
    full_mask = np.zeros(n_total, dtype=bool)
    if mask is not None:
        full_mask[index[mask]] = True
    count = int(full_mask.sum())
    if reason or cam_from_world is None:
        cam_from_world, confidence = np.eye(4), 0.0
        _logger.debug('RANSAC failed: %s', reason)
    else:
        confidence = float(1.0 - np.exp(-count / settings.confidence_inliers))
    return RansacResult(
        success=not reason, world_from_cam=geometry.invert_pose(cam_from_world),
        cam_from_world=cam_from_world, inlier_count=count, inlier_mask=full_mask,
        n_correspondences=n_total, score=score, confidence=confidence, reason=reason)


def ransac_pnp(pixels: FloatArray, points_world: FloatArray, K: FloatArray,
               settings: RansacSettings, rng: np.random.Generator,
               sample_mask: Optional[BoolArray] = None) -> RansacResult:
    """Camera pose from noisy 2D-3D correspondences (deterministic given `rng`'s state).

    Args:
        pixels: (N, 2) OpenCV pixel coordinates in the image described by `K`.
        points_world: (N, 3) predicted scene coordinates of those pixels, world frame, metres.
            Rows with non-finite values in either input are ignored.
        K: (3, 3) pinhole intrinsics, fx and fy may differ; no skew, no distortion.
        settings: RANSAC settings.
        rng: source of the random 4-tuples.
        sample_mask: (N,) the correspondences minimal sets are drawn from (e.g.
            `coherent_cells`); hypotheses are still scored and refined on all of them.
            None, or fewer than 4 usable, draws from all.

    Returns:
        The pose and its inliers, or success=False with a reason.

    Raises:
        ValueError: for inputs of the wrong shape or invalid intrinsics.
        TypeError: if `rng` is not a numpy Generator.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f'rng must be a numpy.random.Generator, got {type(rng).__name__}')
    pixels = np.asarray(pixels, dtype=np.float64)
    points_world = np.asarray(points_world, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    geometry.check_shape(pixels, (None, 2), 'pixels')
    geometry.check_shape(points_world, (len(pixels), 3), 'points_world')
    check_intrinsics(K)
    n_total = len(pixels)
    index = np.flatnonzero(np.isfinite(pixels).all(axis=1) & np.isfinite(points_world).all(1))
    pixels, points_world = pixels[index], points_world[index]

    def result(reason: str, cam_from_world: FloatArray | None = None,
               mask: BoolArray | None = None, score: float = 0.0) -> RansacResult:
        return make_result(reason, settings, n_total, index, cam_from_world, mask, score)

    if len(index) < 4:
        return result(f'too few correspondences ({len(index)} finite of {n_total}, need 4)')
    rays = np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1) @ np.linalg.inv(K).T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    pool = slice(None)
    if sample_mask is not None:
        sample_mask = np.asarray(sample_mask, dtype=bool)
        geometry.check_shape(sample_mask, (n_total,), 'sample_mask')
        if sample_mask[index].sum() >= 4:
            pool = sample_mask[index]
    rotation, translation, tries = _sample_hypotheses(rays[pool], points_world[pool],
                                                      pixels[pool], K, settings, rng)
    if len(rotation) == 0:
        return result(f'no valid hypothesis in {tries} tries')
    error = _reprojection_errors(rotation, translation, points_world, pixels, K, settings)
    beta = settings.soft_inlier_sharpness / settings.inlier_threshold_px
    # 1 - sigmoid(x) = 1 / (1 + exp(x)); the clip keeps exp finite for tiny thresholds.
    soft = np.clip(beta * (error - settings.inlier_threshold_px), -50, 50, out=error)
    np.exp(soft, out=soft)
    soft += 1
    scores = np.reciprocal(soft, out=soft).sum(axis=1)
    best = int(np.argmax(scores))
    cam_from_world, mask = _refine(geometry.make_pose(rotation[best], translation[best]),
                                   points_world, pixels, K, settings)
    score = float(scores[best])
    if mask.sum() < settings.min_inliers:
        return result(f'too few inliers ({int(mask.sum())} < {settings.min_inliers})',
                      mask=mask, score=score)
    return result('', cam_from_world, mask, score)
