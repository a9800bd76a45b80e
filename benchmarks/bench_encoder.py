"""Encoder quality on real data: dense matching accuracy between TUM RGB-D views.

Usage: .venv/bin/python benchmarks/bench_encoder.py [--tum ../shared/data/tum_fr1_rpy]
       [--encoders random,PATH,...] [--gaps 4,12] [--pairs 8]

For pairs of frames `gap` apart, every 8x8 cell of view A with depth is back-projected
(TUM depth, ground-truth poses, the fr1 distortion model) into view B; where B's depth
agrees (not occluded) the true position is known. The score is the share of such cells
whose most similar feature among all cells of B lies within one cell of the truth, at the
mapping resolution (480 px tall). This is the property a scene head needs from the encoder,
measured on a sequence that pretraining never sees.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ace_ros.core import device as device_lib
from ace_ros.core.network import ENCODER_STRIDE, cell_centers, image_to_network_input
from ace_ros.core.weights import build_encoder
from ace_ros.data.tum import interpolate_trajectory, read_tum_intrinsics, read_tum_trajectory


def tum_pairs(root: Path, gaps: List[int], n_pairs: int) -> List[Tuple[np.ndarray, ...]]:
    K, dist, _ = read_tum_intrinsics(root / 'intrinsics.txt')
    rows = [line.split() for line in (root / 'associations.txt').read_text().splitlines()
            if line.strip() and not line.startswith('#')]
    times, poses = read_tum_trajectory(root / 'groundtruth.txt')
    stamps = np.array([float(r[0]) for r in rows])
    frame_poses = interpolate_trajectory(times, poses, stamps, 0.05)
    centres = cell_centers(480, 640).reshape(2, -1).T.numpy().astype(np.float64)
    rays = cv2.undistortPoints(centres[:, None], K, dist)[:, 0]
    pairs = []
    for gap in gaps:
        for a in np.linspace(0, len(rows) - gap - 1, n_pairs).astype(int):
            b = a + gap
            if frame_poses[a] is None or frame_poses[b] is None:
                continue
            images = [cv2.imread(str(root / rows[i][1]), cv2.IMREAD_GRAYSCALE) for i in (a, b)]
            depths = [cv2.imread(str(root / rows[i][3]), cv2.IMREAD_UNCHANGED) / 5000.0
                      for i in (a, b)]
            u, v = np.round(centres.T).astype(int)
            z = depths[0][v, u]
            cam_a = np.c_[rays, np.ones(len(rays))] * z[:, None]
            pose_a, pose_b = frame_poses[a], frame_poses[b]
            world = cam_a @ pose_a[:3, :3].T + pose_a[:3, 3]
            cam_b = (world - pose_b[:3, 3]) @ pose_b[:3, :3]
            proj, _ = cv2.projectPoints(cam_b, np.zeros(3), np.zeros(3), K, dist)
            proj = proj[:, 0]
            inside = (z > 0.1) & (cam_b[:, 2] > 0.1) & (proj[:, 0] >= 0) & \
                (proj[:, 0] <= 639) & (proj[:, 1] >= 0) & (proj[:, 1] <= 479)
            ub = np.clip(np.round(proj[:, 0]), 0, 639).astype(int)
            vb = np.clip(np.round(proj[:, 1]), 0, 479).astype(int)
            z_b = depths[1][vb, ub]
            ok = inside & (np.abs(z_b - cam_b[:, 2]) < 0.05 * cam_b[:, 2])
            cells = np.flatnonzero(ok)
            pairs.append((gap, images[0], images[1], cells, proj[cells]))
    return pairs


@torch.no_grad()
def accuracy(encoder, device, pairs) -> dict:
    by_gap: dict = {}
    for gap, img_a, img_b, cells, xy_b in pairs:
        gray = torch.from_numpy(np.stack([img_a, img_b])).float().div(255)[:, None]
        with device_lib.autocast(device):
            feats = encoder(image_to_network_input(gray.to(device)).contiguous(
                memory_format=torch.channels_last)).float().cpu()
        c, cols = feats.shape[1], feats.shape[3]
        fa = F.normalize(feats[0].reshape(c, -1)[:, torch.from_numpy(cells)].T, dim=1)
        fb = F.normalize(feats[1].reshape(c, -1).T, dim=1)
        best = (fa @ fb.T).argmax(dim=1).numpy()
        true = (xy_b - 3.5) / ENCODER_STRIDE
        hit = (np.abs(best % cols - true[:, 0]) <= 1) & (np.abs(best // cols - true[:, 1]) <= 1)
        h, n = by_gap.get(gap, (0, 0))
        by_gap[gap] = (h + int(hit.sum()), n + len(cells))
    return {gap: h / max(n, 1) for gap, (h, n) in sorted(by_gap.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tum', default=str(Path(__file__).resolve().parents[1].parent
                                             / 'shared' / 'data' / 'tum_fr1_rpy'))
    parser.add_argument('--encoders', default='random')
    parser.add_argument('--gaps', default='4,12')
    parser.add_argument('--pairs', type=int, default=8)
    args = parser.parse_args()
    device = device_lib.resolve_device('auto')
    pairs = tum_pairs(Path(args.tum), [int(g) for g in args.gaps.split(',')], args.pairs)
    print(f'{len(pairs)} TUM pairs, {sum(len(p[3]) for p in pairs)} cells with a true match')
    for spec in args.encoders.split(','):
        encoder, _, label = build_encoder(spec, device)
        scores = accuracy(encoder, device, pairs)
        print(f'{label:>40}: ' + '  '.join(f'gap {g}: {s:.3f}' for g, s in scores.items()))


if __name__ == '__main__':
    main()
