"""node_base: what both nodes share: the life cycle, the logging bridge, the image QoS and
the `main()` runner.

`AceNode` is the base of mapping_node and localization_node, a managed (lifecycle) node
(rclpy.lifecycle, the states of ROS 2's managed nodes: unconfigured, inactive, active,
finalized). The transitions are here, once; a node fills in four hooks:
- `configure_node()`: read and check the parameters, load the map / encoder, create the
  services and lifecycle publishers. A ValueError (a parameter refused, named) fails the
  transition with that reason, logged; the node stays unconfigured.
- `activate_node()`: subscribe to the inputs (images are processed from now on).
- `deactivate_node()`: unsubscribe; no frame is processed or published any more.
- `cleanup_node()`: free what configure made (the model, and GPU memory on CUDA). Also used
  after a failed configure, on shutdown from any state, and before the node is destroyed,
  so it must accept a partly configured node and be idempotent.
With the parameter `autostart` (default true, nav2's lifecycle-manager `autostart` done by
the node itself) the node configures and activates itself in its constructor, so a plain
`ros2 run` / `ros2 launch` works as before; a configure failure then raises the reason (and
`run()` exits with code 2). The shutdown transition, from any state, finalizes the node and
`run()` returns.

Core's Python logging (the 'ace_ros' loggers) goes to the node's ROS logger, so it reaches
/rosout and the screen, until the node is destroyed. `image_qos()` turns the `image_qos`
parameter into a QoS profile. `run()` is both entry points: rclpy init, the executor spun
until the node is finished or a signal comes, a bad parameter at start reported in one line
with exit code 2, and a clean shutdown. Parameters themselves are `ace_ros.ros.params`.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, List, Optional, Type, TypeVar

from ace_ros.ros.params import ParamSpec
import rclpy
from rclpy.clock import JumpHandle
from rclpy.exceptions import InvalidHandle, ParameterException
from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,
                             SingleThreadedExecutor)
from rclpy.lifecycle import (LifecycleNode, LifecyclePublisher, LifecycleState,
                             TransitionCallbackReturn)
import rclpy.logging
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

#: Values of the image_qos parameter.
IMAGE_QOS = ('sensor_data', 'reliable')
_RELIABLE_DEPTH = 10  # rclpy's default depth, for a reliable profile given no depth

#: The life-cycle parameter both nodes declare (in their parameter tables, so that the YAML
#: files and the launch checks see it).
LIFECYCLE_PARAMS: Dict[str, ParamSpec] = {
    'autostart': ParamSpec(True, 'configure and activate at start-up (as nav2\'s lifecycle '
                           'manager would); false = start unconfigured and wait for '
                           'lifecycle transitions (ros2 lifecycle set NODE configure)',
                           read_only=True),
}

E = TypeVar('E')
_SUCCESS = TransitionCallbackReturn.SUCCESS
_FAILURE = TransitionCallbackReturn.FAILURE


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


class AceNode(LifecycleNode):
    """A managed node of this package: the transitions call the hooks (module doc); core's
    logging reaches its ROS logger; `run()` drives it.

    Subclasses set NODE_NAME, declare their parameters (with LIFECYCLE_PARAMS), call
    `start_up()` at the end of their constructor, implement the four hooks and may
    override `finished`, `exit_code` and `interrupt()`. What a hook creates on the node is
    handed to `until_cleanup()` (configure) or `until_deactivate()` (activate), and removed
    from the node here, after `cleanup_node()` / `deactivate_node()`.
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
        self._configured = False  # configure_node() ran (and cleanup_node() not since)
        self._active = False
        self._finalized = False
        self._configure_error: Optional[BaseException] = None
        self._starting = False  # start_up() is configuring: it reports a failure itself
        self._transition_lock = threading.RLock()
        self._until_cleanup: List[Any] = []
        self._until_deactivate: List[Any] = []

    # -- hooks (the subclass's) ----------------------------------------------------------

    def configure_node(self) -> None:
        """Read and check the parameters, build the model; ValueError: a parameter refused."""

    def activate_node(self) -> None:
        """Start taking inputs."""

    def deactivate_node(self) -> None:
        """Stop taking inputs; nothing more is processed or published."""

    def cleanup_node(self) -> None:
        """Free what `configure_node` made (idempotent; also after a partial configure)."""

    def until_cleanup(self, entity: E) -> E:
        """`entity` (a publisher, subscription, service, timer, clock jump handle, or an
        object with `destroy()`) is removed at cleanup, after `cleanup_node()`."""
        self._until_cleanup.append(entity)
        return entity

    def until_deactivate(self, entity: E) -> E:
        """`entity` (as for `until_cleanup`) is removed at deactivate."""
        self._until_deactivate.append(entity)
        return entity

    def _destroy(self, entities: List[Any]) -> None:
        """Remove `entities` from the node, the newest first."""
        while entities:
            entity = entities.pop()
            if isinstance(entity, LifecyclePublisher):
                self.destroy_lifecycle_publisher(entity)
            elif isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            elif isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            elif isinstance(entity, Service):
                self.destroy_service(entity)
            elif isinstance(entity, Timer):
                self.destroy_timer(entity)
            elif isinstance(entity, JumpHandle):
                entity.unregister()
            else:
                entity.destroy()

    # -- state ---------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """In the active state: inputs are processed and results published."""
        return self._active

    @property
    def configured(self) -> bool:
        """Inactive or active: the parameters are read and the model is built."""
        return self._configured

    @property
    def finished(self) -> bool:
        """The node's work is done (or it was shut down) and `run()` should return."""
        return self._finalized

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM, while the node can still log to /rosout."""

    def start_up(self) -> None:
        """End of the constructor: with `autostart`, configure and activate now.

        Raises:
            ValueError: (or what else configure raised) when configuring fails.
            RuntimeError: when activating fails.
        """
        if not self.get_parameter('autostart').value:
            self.get_logger().info('autostart is false: unconfigured, waiting for the '
                                   'configure and activate transitions')
            return
        self._starting = True
        try:
            if self.trigger_configure() != _SUCCESS:
                raise self._configure_error or RuntimeError('configure failed')
            if self.trigger_activate() != _SUCCESS:
                raise RuntimeError('activate failed (see the log)')
        finally:
            self._starting = False

    # -- transitions (rclpy.lifecycle calls these) -----------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._configure_error = None
            try:
                self.configure_node()
            except Exception as error:  # noqa: BLE001 - reported; the node stays unconfigured
                self._configure_error = error
                self._release()
                if not self._starting:
                    what = ('invalid parameters' if isinstance(
                        error, (ValueError, ParameterException)) else type(error).__name__)
                    self.get_logger().error(f'configure failed: {what}: {error}')
                return _FAILURE
            self._configured = True
            self.get_logger().info('configured (inactive)')
            return _SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            try:
                self.activate_node()
            except Exception as error:  # noqa: BLE001 - reported; the node stays inactive
                self.get_logger().error(f'activate failed: {type(error).__name__}: {error}')
                self.deactivate_node()
                self._destroy(self._until_deactivate)
                return _FAILURE
            result = super().on_activate(state)  # the lifecycle publishers
            self._active = result == _SUCCESS
            self.get_logger().info('active: processing images')
            return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._deactivate()
            self.get_logger().info('inactive: not processing images')
            return _SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._release()
            self.get_logger().info('cleaned up (unconfigured)')
            return _SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any primary state: deactivate and clean up as needed; `finished` then."""
        with self._transition_lock:
            self._deactivate()
            self._release()
            self._finalized = True
            self.get_logger().info(f'shut down (from {state.label})')
            return _SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: free everything, back to unconfigured."""
        with self._transition_lock:
            self.get_logger().error(f'error in a transition from {state.label}: cleaning up')
            self._deactivate()
            self._release()
            return _SUCCESS

    def _deactivate(self) -> None:
        if self._active:
            self._active = False
            super().on_deactivate(LifecycleState(0, 'active'))  # the lifecycle publishers
            self.deactivate_node()
        self._destroy(self._until_deactivate)

    def _release(self) -> None:
        self.cleanup_node()
        self._destroy(self._until_deactivate)  # an activate that failed half-way
        self._destroy(self._until_cleanup)
        self._configured = False
        from ace_ros.core.device import free_device_memory  # torch: only once a model was made
        free_device_memory()

    def shutdown(self) -> None:
        """Stop the node's own threads and free its model, before `destroy_node()`
        (idempotent; `run()` and `destroy_node()` call it)."""
        with self._transition_lock:
            self._deactivate()
            if self._configured:
                self._release()

    def destroy_node(self) -> None:
        self.shutdown()
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
            try:
                executor.spin_once(timeout_sec=0.1)
            except InvalidHandle:
                # A transition in another executor thread (deactivate, cleanup) destroyed a
                # subscription while this one added it to the wait set (seen once in the
                # suite); the next spin builds the wait set without it.
                continue
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
