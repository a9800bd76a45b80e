"""node_base: what both nodes share: the logging bridge, the image QoS and the `main()` runner.

`AceNode` is the base of mapping_node and localization_node: core's Python logging (the
'ace_ros' loggers) goes to the node's ROS logger, so it reaches /rosout and the screen, until
the node is destroyed. `image_qos()` turns the `image_qos` parameter into a QoS profile.
`run()` is both entry points: rclpy init, the executor spun until the node is finished or a
signal comes, a bad parameter at start reported in one line with exit code 2, and a clean
shutdown. Parameters themselves are `ace_ros.ros.params`.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional, Type

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,
                             SingleThreadedExecutor)
import rclpy.logging
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

#: Values of the image_qos parameter.
IMAGE_QOS = ('sensor_data', 'reliable')
_RELIABLE_DEPTH = 10  # rclpy's default depth, for a reliable profile given no depth


def image_qos(name: str, depth: Optional[int] = None) -> QoSProfile:
    """The QoS the `image_qos` parameter names, with history `depth`.

    Args:
        name: 'sensor_data' (best effort: matches any publisher) or 'reliable'.
        depth: messages kept; None = the profile's own (sensor_data 5, reliable 10).

    Raises:
        ValueError: naming the parameter, for another name.
    """
    if name == 'sensor_data':
        return QoSProfile(depth=qos_profile_sensor_data.depth if depth is None else depth,
                          reliability=qos_profile_sensor_data.reliability,
                          durability=qos_profile_sensor_data.durability)
    if name == 'reliable':
        return QoSProfile(depth=_RELIABLE_DEPTH if depth is None else depth,
                          reliability=ReliabilityPolicy.RELIABLE)
    raise ValueError(f"parameter image_qos must be 'sensor_data' or 'reliable', got '{name}'")


class RosLogHandler(logging.Handler):
    """Core's Python logging -> a node's ROS logger (so it reaches /rosout and the screen)."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(message)
        elif record.levelno >= logging.INFO:
            self._logger.info(message)
        else:
            self._logger.debug(message)


class AceNode(Node):
    """A node of this package: core's logging reaches its ROS logger; `run()` drives it.

    Subclasses set NODE_NAME and may override `finished`, `interrupt()` and `shutdown()`.
    """

    NODE_NAME = ''
    #: Executor threads `run()` spins the node with (1: a SingleThreadedExecutor).
    EXECUTOR_THREADS = 1
    #: What `run()` returns once the node is finished or interrupted.
    exit_code = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.NODE_NAME, **kwargs)
        self._log_handler = RosLogHandler(self)
        logging.getLogger('ace_ros').addHandler(self._log_handler)
        logging.getLogger('ace_ros').setLevel(logging.INFO)

    @property
    def finished(self) -> bool:
        """The node's work is done and `run()` should return `exit_code`."""
        return False

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM, while the node can still log to /rosout."""

    def shutdown(self) -> None:
        """Stop the node's own threads, before `destroy_node()`."""

    def destroy_node(self) -> None:
        logging.getLogger('ace_ros').removeHandler(self._log_handler)
        super().destroy_node()


def run(node_class: Type[AceNode], args: Optional[list] = None) -> int:
    """Run one node until it is finished or stopped; the process exit code.

    The node's `exit_code` once it is finished or interrupted (0 unless it sets one); 2, with
    one line naming the problem, for parameters the node refuses at start.
    """
    # Ctrl-C and SIGTERM are handled here rather than by rclpy (which would shut the context
    # down first), so that what the node does when interrupted can still log to /rosout.
    # The handlers only set a flag: an exception raised asynchronously inside the executor
    # can leave rclpy's handles marked in use, and destroying the node then blocks.
    stop = threading.Event()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node: Optional[AceNode] = None
    try:
        try:
            node = node_class()
        except (ValueError, ParameterException) as error:  # parameters the settings refuse
            rclpy.logging.get_logger(node_class.NODE_NAME).fatal(
                f'invalid parameters: {error}')
            return 2
        threads = node_class.EXECUTOR_THREADS
        executor = (SingleThreadedExecutor() if threads == 1
                    else MultiThreadedExecutor(num_threads=threads))
        executor.add_node(node)
        while rclpy.ok() and not node.finished and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
        if stop.is_set():
            node.interrupt()
        return node.exit_code
    except (KeyboardInterrupt, ExternalShutdownException):
        if node is not None:
            node.interrupt()
        return 0
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
