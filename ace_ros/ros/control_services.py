"""The localization node's controls as ROS interfaces: services, initialpose, `mode`.

~/trigger, ~/pause, ~/resume and ~/reset (std_srvs/Trigger), the `initialpose` subscription
(RViz's "2D Pose Estimate") and the `mode` parameter changed while running. What they decide
is ROS-free, in `ace_ros.ros.controls` (`Controls`, `PoseGate`); this module only wires them
to the node, and ~/reset also clears the node's pose output (`PoseOutput.forget_pose`).
"""

from __future__ import annotations

from ace_ros.ros import conversions
from ace_ros.ros.controls import Controls, PoseGate
from ace_ros.ros.pose_output import PoseOutput
from ace_ros.ros.timing import LatestSlot
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from std_srvs.srv import Trigger


class ControlServices:
    """Creates the control services, the initialpose subscription and the `mode` callback.

    Args:
        node: the localization node.
        controls: mode, pause and pending trigger.
        gate: the initialpose gate.
        slot: the image waiting for the worker (~/pause drops it).
        output: the pose output (~/reset forgets its last pose and map -> odom; an
            initialpose must be in its map frame).
    """

    def __init__(self, node: Node, controls: Controls, gate: PoseGate, slot: LatestSlot,
                 output: PoseOutput) -> None:
        self._node, self._controls, self._gate = node, controls, gate
        self._slot, self._output = slot, output
        node.add_on_set_parameters_callback(self._on_set_parameters)
        self._services = [
            node.create_service(Trigger, f'~/{name}', handler)
            for name, handler in (('trigger', self._on_trigger), ('pause', self._on_pause),
                                  ('resume', self._on_resume), ('reset', self._on_reset))]
        # RViz's "2D Pose Estimate" publishes here (reliable, like AMCL's subscription).
        self._initialpose_sub = node.create_subscription(
            PoseWithCovarianceStamped, 'initialpose', self._on_initialpose, 10)

    def destroy(self) -> None:
        """Remove the services, the subscription and the `mode` callback (a cleanup)."""
        node = self._node
        node.remove_on_set_parameters_callback(self._on_set_parameters)
        for service in self._services:
            node.destroy_service(service)
        node.destroy_subscription(self._initialpose_sub)

    def _on_set_parameters(self, changed: list) -> SetParametersResult:
        for p in changed:
            if p.name == 'mode':
                try:
                    self._controls.mode = p.value if isinstance(p.value, str) else repr(p.value)
                except ValueError as e:
                    return SetParametersResult(successful=False, reason=str(e))
                self._node.get_logger().info(f"mode is now '{p.value}'")
        return SetParametersResult(successful=True)

    def _on_trigger(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = self._controls.trigger()
        return response

    def _on_pause(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = True, self._controls.pause()
        self._slot.take(timeout_s=0.0)  # an image waiting for the worker is not localized
        self._node.get_logger().info(response.message)
        return response

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response):
        response.success, response.message = True, self._controls.resume()
        self._node.get_logger().info(response.message)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        """Forget the last pose, map -> odom (no longer re-broadcast), the initialpose and a
        pending trigger; frames being localized publish nothing (a new epoch)."""
        self._controls.reset()
        self._gate.clear()
        self._output.forget_pose(time_jumped=False)
        response.success = True
        response.message = 'reset: last pose, map -> odom and initialpose cleared'
        self._node.get_logger().info(response.message)
        return response

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        frame, map_frame = msg.header.frame_id, self._output.map_frame
        log = self._node.get_logger()
        if frame not in ('', map_frame):
            log.warning(f"initialpose ignored: it is in frame '{frame}', expected the map "
                        f"frame '{map_frame}'")
            return
        try:
            self._gate.set_prior(conversions.pose_to_matrix(msg.pose.pose),
                                 conversions.stamp_to_ns(msg.header.stamp))
        except ValueError as e:
            log.warning(f'initialpose ignored: {e}')
            return
        log.info(f'initialpose received: poses are accepted only within '
                 f'{self._gate.gate_m:g} m and {self._gate.gate_deg:g} deg of it, until one is')
