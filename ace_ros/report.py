"""Evaluation and localization outputs: per-frame CSV, TUM trajectories, PNG plots.

ROS-free. matplotlib is imported only inside the plotting functions (and draws through its
Agg canvas, never pyplot), so importing this module costs the nodes nothing.

TUM trajectory files are one pose per line, ``timestamp tx ty tz qx qy qz qw``, camera-to-world
(the format `evo` reads: ``evo_ape tum gt.txt est.txt``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from ace_ros.core import geometry, metrics
from ace_ros.core.types import Frame, LocalizationResult

#: Columns of the per-frame CSV that `write_frames_csv` writes, in order.
CSV_COLUMNS = ('name', 'timestamp', 'success', 't_error_m', 'r_error_deg', 'inliers',
               'confidence', 'ms')
#: Header of the `ace` pose file (`ace-ros localize --pose-format ace`).
ACE_POSE_HEADER = ('# name qw qx qy qz tx ty tz inliers confidence (camera-to-world; a failed '
                   'frame has confidence 0 and an identity pose)')
POSE_FORMATS = ('ace', 'tum')
#: The accuracy threshold the plots mark (metrics.THRESHOLDS' 5cm/5deg).
T_THRESHOLD_M, R_THRESHOLD_DEG = 0.05, 5.0
#: File names `write_evaluation` writes into its folder.
EVALUATION_FILES = ('frames.csv', 'summary.json', 'est.txt', 'gt.txt', 'trajectory.png',
                    'error_cdf.png', 'errors.png')


@dataclass(frozen=True)
class LocalizedFrame:
    """One localized query frame, as `ace-ros localize` writes it.

    Attributes:
        index: position in the query sequence (0-based).
        name: the frame's name.
        stamp: seconds; 0.0 when the source has no time.
        result: the localizer's result.
    """

    index: int
    name: str
    stamp: float
    result: LocalizationResult


@dataclass(frozen=True)
class FrameEvaluation:
    """One query frame scored against its ground-truth pose.

    Attributes:
        index: position in the query sequence (0-based).
        name: the frame's name.
        stamp: seconds; 0.0 when the source has no time.
        success: the localizer found a pose.
        world_from_cam: (4, 4) estimated camera-to-world pose (identity when failed).
        world_from_cam_gt: (4, 4) ground-truth camera-to-world pose.
        t_error_m: camera-centre error in metres (inf when failed).
        r_error_deg: rotation error in degrees (inf when failed).
        inliers: RANSAC inliers of the final pose.
        confidence: the localizer's confidence in [0, 1] (0 when failed).
        timings_ms: per-stage wall time as in `LocalizationResult.timings_ms`.
    """

    index: int
    name: str
    stamp: float
    success: bool
    world_from_cam: npt.NDArray[np.float64]
    world_from_cam_gt: npt.NDArray[np.float64]
    t_error_m: float
    r_error_deg: float
    inliers: int
    confidence: float
    timings_ms: Dict[str, float] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        """End-to-end localization time of this frame in ms (nan when not timed)."""
        return float(self.timings_ms.get('total', math.nan))


@dataclass(frozen=True)
class StampedPose:
    """A (4, 4) camera-to-world pose at a time in seconds (one line of a TUM file)."""

    stamp: float
    world_from_cam: npt.NDArray[np.float64]


def evaluate_frame(index: int, frame: Frame, result: LocalizationResult) -> FrameEvaluation:
    """Score `result` against `frame`'s ground truth.

    Raises:
        ValueError: if `frame` has no ground-truth pose.
    """
    if frame.world_from_cam is None:
        raise ValueError(f'frame {frame.name}: no ground-truth pose to evaluate against')
    if result.success:
        t_err, r_err = geometry.pose_error(result.world_from_cam, frame.world_from_cam)
    else:
        t_err, r_err = math.inf, math.inf
    return FrameEvaluation(
        index=index, name=frame.name, stamp=float(frame.stamp), success=bool(result.success),
        world_from_cam=np.asarray(result.world_from_cam, dtype=np.float64),
        world_from_cam_gt=frame.world_from_cam, t_error_m=float(t_err),
        r_error_deg=float(r_err), inliers=int(result.inlier_count),
        confidence=float(result.confidence), timings_ms=dict(result.timings_ms))


def summarize(records: Sequence[FrameEvaluation]) -> Dict[str, float]:
    """`metrics.summarize` of scored frames (the `evaluate` table and --json)."""
    return metrics.summarize([(r.t_error_m, r.r_error_deg) for r in records],
                             [r.timings_ms for r in records])


def tum_timestamps(stamps: Sequence[float], indices: Sequence[int]) -> List[float]:
    """TUM timestamps of a sequence: its stamps when every frame has a distinct non-zero one,
    else the frame indices (dataset folders without time have all stamps 0.0)."""
    if len(stamps) != len(indices):
        raise ValueError(f'{len(stamps)} stamps but {len(indices)} indices')
    usable = all(s != 0.0 and math.isfinite(s) for s in stamps) and (
        len(set(stamps)) == len(stamps))
    return [float(s) for s in stamps] if usable else [float(i) for i in indices]


def format_tum_line(stamp: float, world_from_cam: npt.NDArray[np.float64]) -> str:
    """``timestamp tx ty tz qx qy qz qw`` of a (4, 4) camera-to-world pose."""
    t, q = geometry.pose_to_translation_quaternion(world_from_cam)
    return (f'{stamp:.6f} {t[0]:.6f} {t[1]:.6f} {t[2]:.6f} '
            f'{q[0]:.8f} {q[1]:.8f} {q[2]:.8f} {q[3]:.8f}')


def write_tum(path: Path, poses: Iterable[StampedPose]) -> None:
    """Write a TUM trajectory file (a '#' header line, then one pose per line)."""
    lines = ['# timestamp tx ty tz qx qy qz qw (camera-to-world)']
    lines += [format_tum_line(p.stamp, p.world_from_cam) for p in poses]
    Path(path).write_text('\n'.join(lines) + '\n')


def read_tum(path: Path) -> List[StampedPose]:
    """Read a TUM trajectory file ('#' lines and blank lines are skipped).

    Raises:
        ValueError: for a line that is not 8 numbers.
    """
    poses = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if len(values) != 8:
            raise ValueError(f'{path}:{number}: expected 8 numbers "timestamp tx ty tz qx qy '
                             f'qz qw", got {line!r:.80}')
        poses.append(StampedPose(values[0], geometry.pose_from_translation_quaternion(
            values[1:4], values[4:8])))
    return poses


def format_ace_line(name: str, result: LocalizationResult) -> str:
    """One line of the `ace` pose file: see `ACE_POSE_HEADER`."""
    t, q = geometry.pose_to_translation_quaternion(result.world_from_cam)
    return (f'{name} {q[3]:.8f} {q[0]:.8f} {q[1]:.8f} {q[2]:.8f} '
            f'{t[0]:.6f} {t[1]:.6f} {t[2]:.6f} {result.inlier_count} {result.confidence:.4f}')


def write_pose_file(path: Path, frames: Sequence[LocalizedFrame], fmt: str = 'ace') -> None:
    """Write localized poses: `ace` has every frame (see `ACE_POSE_HEADER`); `tum` only the
    localized ones, timestamped as `tum_timestamps` says.

    Raises:
        ValueError: for an unknown `fmt`.
    """
    if fmt == 'ace':
        lines = [ACE_POSE_HEADER] + [format_ace_line(f.name, f.result) for f in frames]
        Path(path).write_text('\n'.join(lines) + '\n')
    elif fmt == 'tum':
        stamps = tum_timestamps([f.stamp for f in frames], [f.index for f in frames])
        write_tum(path, [StampedPose(s, f.result.world_from_cam)
                         for s, f in zip(stamps, frames) if f.result.success])
    else:
        raise ValueError(f'pose format {fmt!r} is not one of {POSE_FORMATS}')


def write_frames_csv(path: Path, records: Sequence[FrameEvaluation]) -> None:
    """Per-frame CSV with `CSV_COLUMNS`; a failed frame's errors are ``inf``."""
    stamps = tum_timestamps([r.stamp for r in records], [r.index for r in records])
    with open(path, 'w', newline='') as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for stamp, r in zip(stamps, records):
            writer.writerow([r.name, f'{stamp:.6f}', int(r.success), f'{r.t_error_m:.6f}',
                             f'{r.r_error_deg:.4f}', r.inliers, f'{r.confidence:.4f}',
                             f'{r.ms:.2f}'])


def write_evaluation(out_dir: Path, records: Sequence[FrameEvaluation],
                     summary: Optional[Dict[str, Any]] = None) -> List[Path]:
    """Write `EVALUATION_FILES` into `out_dir` (created if missing); returns their paths.

    ``est.txt`` holds the localized frames only, ``gt.txt`` every scored frame, both with the
    same timestamps (`tum_timestamps`), so evo associates them.

    Raises:
        ValueError: if `records` is empty.
    """
    if not records:
        raise ValueError('no scored frames to write')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in EVALUATION_FILES]
    csv_path, summary_path, est_path, gt_path, traj_path, cdf_path, errors_path = paths
    write_frames_csv(csv_path, records)
    summary_path.write_text(json.dumps(summary if summary is not None else summarize(records),
                                       indent=2, sort_keys=True) + '\n')
    stamps = tum_timestamps([r.stamp for r in records], [r.index for r in records])
    write_tum(est_path, [StampedPose(s, r.world_from_cam)
                         for s, r in zip(stamps, records) if r.success])
    write_tum(gt_path, [StampedPose(s, r.world_from_cam_gt) for s, r in zip(stamps, records)])
    plot_trajectory(traj_path, records)
    plot_error_cdf(cdf_path, records)
    plot_errors(errors_path, records)
    return paths


def top_down_axes(positions: npt.NDArray[np.float64]) -> Tuple[int, int]:
    """The two world axes a top-down view of (N, 3) camera positions shows: those with the
    widest spread, the narrowest being taken as up (the world frames of datasets differ:
    z up in ROS, y down in 7-Scenes)."""
    spread = np.ptp(positions, axis=0) if len(positions) else np.zeros(3)
    i, j = sorted(int(a) for a in np.argsort(-spread, kind='stable')[:2])
    return i, j


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.figure import Figure
    return Figure(figsize=(width_in, height_in), dpi=100, layout='constrained')


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig).print_figure(str(path), dpi=100)


def plot_trajectory(path: Path, records: Sequence[FrameEvaluation]) -> None:
    """Top-down PNG: the ground-truth path as a line, estimates as points coloured by their
    translation error, failed frames as red crosses at their ground-truth position."""
    gt = np.array([r.world_from_cam_gt[:3, 3] for r in records]).reshape(-1, 3)
    i, j = top_down_axes(gt)
    ok = [r for r in records if r.success]
    fig = _figure(7.0, 6.0)
    ax = fig.add_subplot()
    ax.plot(gt[:, i], gt[:, j], '-', color='0.4', lw=1.2, label='ground truth')
    if ok:
        est = np.array([r.world_from_cam[:3, 3] for r in ok])
        errors = np.array([r.t_error_m for r in ok])
        points = ax.scatter(est[:, i], est[:, j], c=errors, cmap='viridis', s=18, vmin=0.0,
                            vmax=max(2 * T_THRESHOLD_M, float(errors.max())), zorder=3,
                            label='estimate')
        fig.colorbar(points, ax=ax, label='translation error [m]')
    failed = np.array([r.world_from_cam_gt[:3, 3] for r in records if not r.success])
    if len(failed):
        ax.plot(failed[:, i], failed[:, j], 'x', color='red', ms=7, mew=1.5, zorder=4,
                label=f'failed ({len(failed)})')
    names = 'xyz'
    ax.set_xlabel(f'{names[i]} [m]')
    ax.set_ylabel(f'{names[j]} [m]')
    ax.set_aspect('equal', adjustable='datalim')
    ax.set_title(f'trajectory, top-down ({len(ok)} of {len(records)} frames localized)')
    ax.legend(loc='best', fontsize='small')
    ax.grid(True, alpha=0.3)
    _save(fig, path)


def _cdf_panel(ax: Any, errors: npt.NDArray[np.float64], threshold: float, unit: str,
               label: str) -> None:
    """Percent of all frames (failures included, as +inf) within each error."""
    n = len(errors)
    finite = np.sort(errors[np.isfinite(errors)])
    percent = 100.0 * np.arange(1, len(finite) + 1) / n
    upper = max(3 * threshold, float(np.percentile(finite, 98)) if len(finite) else 0.0)
    ax.step(np.r_[0.0, finite, upper], np.r_[0.0, percent, percent[-1] if len(percent) else 0],
            where='post', color='C0')
    within = 100.0 * np.sum(errors <= threshold) / n
    ax.axvline(threshold, color='C3', ls='--',
               label=f'{threshold:g} {unit}: {within:.1f} % of frames')
    ax.set_xlim(0.0, upper)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel(f'{label} [{unit}]')
    ax.set_ylabel('frames within [%]')
    ax.legend(loc='lower right', fontsize='small')
    ax.grid(True, alpha=0.3)


def plot_error_cdf(path: Path, records: Sequence[FrameEvaluation]) -> None:
    """PNG of the translation and rotation error CDFs with the 5cm / 5deg thresholds."""
    t_cm = np.array([r.t_error_m for r in records]) * 100.0
    r_deg = np.array([r.r_error_deg for r in records])
    fig = _figure(10.0, 4.0)
    ax_t, ax_r = fig.subplots(1, 2)
    _cdf_panel(ax_t, t_cm, T_THRESHOLD_M * 100.0, 'cm', 'translation error')
    _cdf_panel(ax_r, r_deg, R_THRESHOLD_DEG, 'deg', 'rotation error')
    both = 100.0 * np.mean((t_cm <= T_THRESHOLD_M * 100.0) & (r_deg <= R_THRESHOLD_DEG))
    fig.suptitle(f'{len(records)} frames: {both:.1f} % within 5cm / 5deg')
    _save(fig, path)


def plot_errors(path: Path, records: Sequence[FrameEvaluation]) -> None:
    """PNG of the translation and rotation error of each frame over the sequence; failed
    frames are red crosses along the top."""
    index = np.array([r.index for r in records])
    failed = index[np.array([not r.success for r in records], dtype=bool)]
    fig = _figure(10.0, 5.0)
    ax_t, ax_r = fig.subplots(2, 1, sharex=True)
    for ax, values, threshold, unit, label in (
            (ax_t, [r.t_error_m * 100.0 for r in records], T_THRESHOLD_M * 100.0, 'cm',
             'translation error'),
            (ax_r, [r.r_error_deg for r in records], R_THRESHOLD_DEG, 'deg', 'rotation error')):
        values = np.array(values)
        shown = np.where(np.isfinite(values), values, np.nan)
        ax.plot(index, shown, '.-', color='C0', lw=0.8, ms=4)
        ax.axhline(threshold, color='C3', ls='--', lw=1.0, label=f'{threshold:g} {unit}')
        if len(failed):
            ax.plot(failed, np.ones(len(failed)), 'x', color='red', ms=6,
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label=f'failed ({len(failed)})')
        top = np.nanmax(shown) if np.isfinite(shown).any() else threshold
        ax.set_ylim(0.0, 1.1 * max(top, 2 * threshold))
        ax.set_ylabel(f'{label} [{unit}]')
        ax.legend(loc='best', fontsize='small')
        ax.grid(True, alpha=0.3)
    ax_r.set_xlabel('frame index')
    _save(fig, path)


def plot_map(path: Path, scene_mean: npt.NDArray[np.float64], n_frames: int,
             world_frame_id: str, note: str = '') -> None:
    """PNG of what a map file records about its scene's layout.

    A map file stores its mapping frames' names and intrinsics but not their poses, so this
    draws the scene mean (the (3,) world point the head predicts around) in the x-y and x-z
    planes, which are top-down for z-up (ROS) and y-down (7-Scenes) worlds, and says so.
    """
    mean = np.asarray(scene_mean, dtype=np.float64).reshape(3)
    fig = _figure(9.0, 4.5)
    names = 'xyz'
    for ax, (i, j) in zip(fig.subplots(1, 2), ((0, 1), (0, 2))):
        ax.plot(mean[i], mean[j], 'o', color='C1', ms=10, label='scene mean')
        ax.plot(0.0, 0.0, '+', color='0.3', ms=12, label=f'{world_frame_id} origin')
        ax.annotate(f'({mean[i]:.2f}, {mean[j]:.2f})', (mean[i], mean[j]),
                    textcoords='offset points', xytext=(8, 8))
        span = max(1.0, 1.5 * float(np.max(np.abs(mean[[i, j]]))))
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_aspect('equal')
        ax.set_xlabel(f'{names[i]} [m]')
        ax.set_ylabel(f'{names[j]} [m]')
        ax.grid(True, alpha=0.3)
        ax.legend(loc='lower right', fontsize='small')
    fig.suptitle(f'map in frame {world_frame_id!r}: {n_frames} mapping frames; the file '
                 'records no camera poses, only the scene mean' + (f'\n{note}' if note else ''),
                 fontsize='medium')
    _save(fig, path)
