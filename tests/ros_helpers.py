"""Helpers for the rclpy tests: a probe node spinning in the test process, messages, bounded waits."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from synseg_ros import conversions, processes
from tests.ros_processes import TIMEOUT_S

stop_node = processes.stop       # SIGINT the process group, SIGKILL if it lingers


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT_S, what: str = "condition",
               procs: Sequence[Any] = ()) -> Any:
    """``processes.wait_until`` with the tests' default timeout."""
    return processes.wait_until(predicate, timeout, what, procs)


def interrupt_when_logged(proc: Any, log: Path, text: str, sig: int = signal.SIGINT,
                          timeout: float = TIMEOUT_S) -> tuple[int, float]:
    """Once ``text`` is in ``log``, send ``sig`` to ``proc``'s process group (what Ctrl-C in a terminal does);
    returns its exit code and the seconds from the signal to the exit. The process is stopped and its log
    printed whatever happens."""
    try:
        wait_until(lambda: text in log.read_text(), timeout, f"{text!r} in {log}", procs=[proc])
        sent = time.monotonic()
        os.killpg(proc.pid, sig)
        code = proc.wait(timeout)
        return code, time.monotonic() - sent
    finally:
        stop_node(proc)
        print(log.read_text())


def image_msg(rgb: np.ndarray, encoding: str, stamp: Any, frame_id: str = "camera") -> Image:
    """A sensor_msgs/Image of ``rgb`` in ``encoding`` with the given stamp."""
    msg = Image(**conversions.rgb_to_image_fields(rgb, encoding))
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


class Probe:
    """A node in the test process: publishes images, records the synseg node's outputs, calls its services.

    Spins in a background thread; received messages are appended to ``self.received[topic]`` with their
    arrival time (``time.time()``).
    """

    def __init__(self, name: str, image_topic: str, outputs: dict[str, type], target: str = "/synseg") -> None:
        self.node = Node(name)
        self.image_pub = self.node.create_publisher(Image, image_topic, qos_profile_sensor_data)
        self.received: dict[str, list[tuple[float, Any]]] = {topic: [] for topic in outputs}
        self._lock = threading.Lock()
        for topic, msg_type in outputs.items():
            self.node.create_subscription(msg_type, topic, self._recorder(topic), 50)
        self.set_client = self.node.create_client(SetParameters, f"{target}/set_parameters")
        self.get_client = self.node.create_client(GetParameters, f"{target}/get_parameters")
        self.change_state_client = self.node.create_client(ChangeState, f"{target}/change_state")
        self.get_state_client = self.node.create_client(GetState, f"{target}/get_state")
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def _recorder(self, topic: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            with self._lock:
                self.received[topic].append((time.time(), msg))
        return record

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return [msg for _, msg in self.received[topic]]

    def clear(self, *topics: str) -> None:
        """Forget what was received on ``topics`` (default: every topic)."""
        with self._lock:
            for topic in topics or self.received:
                self.received[topic].clear()

    def now(self) -> Any:
        return self.node.get_clock().now().to_msg()

    def wait_for_node(self, timeout: float = TIMEOUT_S, active: bool = True) -> None:
        """Until the synseg node's services answer and, if ``active``, its image subscription is matched."""
        wait_until(lambda: self.set_client.service_is_ready() and self.get_client.service_is_ready()
                   and self.change_state_client.service_is_ready()
                   and (not active or self.image_pub.get_subscription_count() > 0), timeout, "the synseg node")
        # A client is "ready" once it has matched the server, but the server may not have matched the client's
        # reply reader yet; Fast DDS then drops the reply ("failed to send response (timeout)"), which a loaded
        # machine makes likely. A harmless request per client, repeated until one is answered, waits for both.
        for client, request in ((self.get_client, GetParameters.Request()), (self.set_client, SetParameters.Request()),
                                (self.get_state_client, GetState.Request())):
            wait_until(lambda c=client, r=request: self._answered(c, r), timeout, f"an answer from {client.srv_name}")

    def _answered(self, client: Any, request: Any, wait: float = 1.0) -> bool:
        future = client.call_async(request)
        deadline = time.monotonic() + wait
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        return future.done()

    def change_state(self, transition: str, timeout: float = TIMEOUT_S) -> bool:
        """Ask for a lifecycle transition by its label (configure, activate, ...); True if it succeeded."""
        request = ChangeState.Request(transition=Transition(label=transition))
        return self.call(self.change_state_client, request, timeout).success

    def get_state(self) -> str:
        return self.call(self.get_state_client, GetState.Request()).current_state.label

    def call(self, client: Any, request: Any, timeout: float = TIMEOUT_S) -> Any:
        future = client.call_async(request)
        wait_until(future.done, timeout, f"a reply from {client.srv_name}")
        return future.result()

    def set_parameter(self, name: str, value: Any) -> Any:
        """SetParameters with a ParameterValue typed as rclpy would type ``value``; returns the result."""
        msg = Parameter(name, value=value).to_parameter_msg()
        return self.call(self.set_client, SetParameters.Request(parameters=[msg])).results[0]

    def set_raw_parameter(self, name: str, value: ParameterValue) -> Any:
        """SetParameters with an explicit ParameterValue (what `ros2 param set` sends)."""
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])
        return self.call(self.set_client, request).results[0]

    def get_parameter(self, name: str) -> Any:
        reply = self.call(self.get_client, GetParameters.Request(names=[name]))
        return Parameter.from_parameter_msg(ParameterMsg(name=name, value=reply.values[0])).value

    def publish_until(self, make_msg: Callable[[], Image], predicate: Callable[[], Any],
                      period: float = 0.1, timeout: float = TIMEOUT_S, what: str = "a reply") -> Any:
        """Publish ``make_msg()`` every ``period`` s until ``predicate()`` is truthy (best effort may drop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.image_pub.publish(make_msg())
            end = time.monotonic() + period
            while time.monotonic() < end:
                value = predicate()
                if value:
                    return value
                time.sleep(0.01)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def close(self) -> None:
        self._executor.shutdown()
        self.node.destroy_node()


def latest_diagnostics(messages: Sequence[Any], node: str = "/synseg") -> dict[str, str]:
    """Key/value pairs of the newest segmentation status of ``node`` in DiagnosticArray messages ({} if none)."""
    for array in reversed(messages):
        for status in array.status:
            if status.name == f"{node}: segmentation":
                return {kv.key: kv.value for kv in status.values}
    return {}


def mask_array(image: Image) -> np.ndarray:
    """A mono8 Image as an (H, W) uint8 array."""
    return np.frombuffer(bytes(image.data), dtype=np.uint8).reshape(image.height, image.step)[:, : image.width]
