"""mapping_diagnostics: mapping_node's /diagnostics status, from its session's status."""

from __future__ import annotations

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
    p = status.progress
    if p is not None:
        values.update({'stage': p.stage, 'done': p.done, 'total': p.total,
                       'loss': p.loss, 'rate': p.rate, 'eta_s': p.eta_s})
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
    return diagnostics.Report(diagnostics.OK, 'collecting keyframes', values)
