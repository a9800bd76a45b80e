"""mapping_diagnostics: mapping_node's /diagnostics status, from its session's status.

Coverage (`ace_ros.core.coverage`): 'coverage_voxels' (0.25 m voxels the keyframes' cameras
visited), 'coverage_view_cells' ((voxel, viewing direction) cells seen, of 20 directions),
'coverage_direction_share', 'coverage_new_recent' (cells new in the last
'coverage_recent_keyframes' keyframes) and 'path_length_m'. While collecting, a full window
without new cells says so in the message: more of the same driving adds nothing, ~/finish.
"""

from __future__ import annotations

import math
from typing import Dict

from ace_ros.core.online_mapping import OnlineMappingSession
from ace_ros.ros import diagnostics


def mapping_report(session: OnlineMappingSession) -> diagnostics.Report:
    """The 'mapping' task's level, message and values (keyframes, inputs, progress)."""
    status = session.status()
    values: Dict[str, object] = {'state': status.state, 'keyframes': status.keyframes,
                                 'pending_images': status.pending,
                                 'keyframes_queued': status.queued,
                                 'keyframes_encoded': status.encoded,
                                 'buffer_cells': status.buffer_cells}
    if session.online.train_while_collecting:
        values.update({'iterations_while_collecting': status.warm_iterations,
                       'median_error_px_while_collecting': status.warm_median_error_px})
    values.update({k: v for k, v in status.counts.items() if v or k in ('images', 'poses')})
    c = status.coverage
    if c is not None:
        values.update({'coverage_voxels': c.voxels, 'coverage_view_cells': c.view_cells,
                       'coverage_direction_share': c.direction_share,
                       'coverage_new_recent': c.new_recent,
                       'coverage_recent_keyframes': c.recent_keyframes,
                       'coverage_saturating': c.saturating, 'path_length_m': c.path_length_m})
    p = status.progress
    if p is not None:
        values.update({'stage': p.stage, 'done': p.done, 'total': p.total,
                       'loss': p.loss, 'rate': p.rate, 'eta_s': p.eta_s})
    if math.isfinite(status.median_error_px):
        values['median_error_px'] = status.median_error_px
    if status.keyframes_dir:
        values['keyframes_dir'] = status.keyframes_dir
    if status.state == 'failed':
        return diagnostics.Report(diagnostics.ERROR, f'mapping failed: {status.error}', values)
    if status.state == 'training':
        return diagnostics.Report(diagnostics.OK, 'training', values)
    if status.state == 'done':
        return diagnostics.Report(diagnostics.OK, 'map written', values)
    images = status.counts['images']
    if images and status.counts['no_pose'] > images / 2:
        return diagnostics.Report(diagnostics.WARN, 'most images have no pose', values)
    if c is not None and c.saturating:
        return diagnostics.Report(
            diagnostics.OK, 'collecting keyframes; coverage saturating (no new view cells in '
            f'the last {c.recent_keyframes} keyframes): call ~/finish when done', values)
    return diagnostics.Report(diagnostics.OK, 'collecting keyframes', values)
