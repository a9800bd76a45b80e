"""Regions of a scene, one head each: which mapping frames a region holds, and which regions
a query image is likely to see.

Why: a 2-core CPU affords one small head a few thousand steps, too few for it to fit a whole
room (training median reprojection error ~90 px on the 360-degree room proxy, 41-44 px even
with every cell's true 3D point as a target). K heads of the same size, each trained on the
frames looking at one part of the room with 1/K of the iterations, cost the same arithmetic
and have K times the capacity per cell: with 8 the room proxy went from 65 to 76 % within
5cm/5deg (benchmarks/RESULTS.md, session 20). This is ESAC's expert split (Brachmann and
Rother, ICCV 2019), with retrieval on the image context instead of a gating network: the
context is already computed for the head, and ranks the right region first for 94 % of the
proxy's queries with 4 regions, 80 % with 8 (the localizer then tries a second one).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import numpy.typing as npt
import torch

from ace_ros.core.types import Frame

#: A frame is placed by the point this far along its optical axis: about where an indoor
#: camera's view is centred, so frames looking at the same wall from the same side cluster.
LOOK_AHEAD_M = 1.5
#: Mapping images whose context is most like a query's that vote for their regions.
VOTERS = 5


def view_points(frames: Sequence[Frame], look_ahead_m: float = LOOK_AHEAD_M
                ) -> npt.NDArray[np.float64]:
    """(N, 3) world points `look_ahead_m` in front of each posed frame's camera."""
    poses = np.stack([f.world_from_cam for f in frames])
    return poses[:, :3, 3] + look_ahead_m * poses[:, :3, 2]


def regions_for(frames: Sequence[Frame], max_regions: int, radius_m: float,
                seed: int = 0) -> npt.NDArray[np.int64]:
    """`assign_regions` with as few regions as make the points each region's frames look at
    lie within `radius_m` of their centre on average (in every region), at most
    `max_regions`: a scene whose views one head covers (TUM fr1/rpy: a camera turning in
    place, 0.46 m) keeps one head; a room seen from all sides (the room proxy: 2.5 m) gets
    several."""
    points = view_points(frames)
    for regions in range(1, min(max_regions, len(frames)) + 1):
        labels = assign_regions(frames, regions, seed)
        spread = max(np.linalg.norm(points[labels == k] - points[labels == k].mean(0),
                                    axis=1).mean() for k in range(regions))
        if spread <= radius_m:
            break
    return labels


def assign_regions(frames: Sequence[Frame], regions: int, seed: int = 0
                   ) -> npt.NDArray[np.int64]:
    """(N,) region of each posed frame in 0..regions-1: k-means (OpenCV, k-means++ seeds,
    best of 5) of their `view_points`. Every region gets at least one frame.

    Raises:
        ValueError: fewer frames than regions.
    """
    if len(frames) < regions:
        raise ValueError(f'{regions} regions need at least {regions} posed frames, got '
                         f'{len(frames)}')
    if regions == 1:
        return np.zeros(len(frames), np.int64)
    points = view_points(frames).astype(np.float32)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-4)
    _, labels, _ = cv2.kmeans(points, regions, None, criteria, 5, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel().astype(np.int64)
    # k-means may leave a cluster empty on degenerate input (frames that all look at one
    # point): such a region gets the frame farthest from its own region's centre.
    for empty in sorted(set(range(regions)) - set(labels.tolist())):
        centres = np.stack([points[labels == k].mean(0) if np.any(labels == k)
                            else points.mean(0) for k in range(regions)])
        spread = np.linalg.norm(points - centres[labels], axis=1)
        counts = np.bincount(labels, minlength=regions)
        spread[counts[labels] < 2] = -1.0  # never empty another region
        labels[int(np.argmax(spread))] = empty
    return labels


def rank_regions(context: torch.Tensor, image_contexts: torch.Tensor,
                 image_regions: torch.Tensor, regions: int, voters: int = VOTERS
                 ) -> list:
    """Regions in the order a query should try them: by the votes of the `voters` mapping
    images whose context is most like the query's (cosine), ties and regions without votes
    by their most similar image.

    Args:
        context: (C,) the query image's `global_context`.
        image_contexts: (M, C) the mapping images' contexts (float; a localizer converts
            the map's fp16 ones once).
        image_regions: (M,) the region of each mapping image.
        regions: how many regions the map has.
    """
    similarity = torch.nn.functional.normalize(image_contexts, dim=1) @ \
        torch.nn.functional.normalize(context.float().reshape(-1), dim=0)
    labels = image_regions.long()
    top = similarity.topk(min(voters, len(similarity))).indices
    votes = torch.bincount(labels[top], minlength=regions).float()
    best = torch.full((regions,), -2.0).scatter_reduce(0, labels, similarity, 'amax')
    # Votes first; the best similarity (in [-1, 1]) breaks ties.
    return torch.argsort(votes * 4.0 + best, descending=True).tolist()
