"""The node's executor hands each ready callback to its thread pool once (synseg_ros.executor)."""
from __future__ import annotations

import threading
import time

import pytest

from synseg_ros.executor import NodeExecutor

pytestmark = pytest.mark.ros


def test_each_callback_is_handed_to_the_thread_pool_once(ros_context):
    """Frames at 100 Hz to a subscription whose callback holds the GIL 2 ms, beside a thread that wants the GIL
    (as the node's worker does): rclpy's MultiThreadedExecutor hands each callback over about 5 times, spinning
    meanwhile (rclpy issue 1452); the node's executor once."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    node = rclpy.create_node("handing_over")
    executor = NodeExecutor(num_threads=3)
    handed_over = []
    submit = executor._executor.submit

    def counting_submit(fn, *args, **kwargs):
        handed_over.append(fn)
        return submit(fn, *args, **kwargs)

    executor._executor.submit = counting_submit
    ran = []

    def callback(msg: Image) -> None:
        ran.append(msg)
        start = time.perf_counter()
        while time.perf_counter() - start < 0.002:
            pass

    node.create_subscription(Image, "/handing_over", callback, qos_profile_sensor_data)
    publisher = node.create_publisher(Image, "/handing_over", qos_profile_sensor_data)
    stop = threading.Event()

    def wants_the_gil() -> None:
        while not stop.is_set():
            sum(range(1000))

    executor.add_node(node)
    threads = [threading.Thread(target=executor.spin, daemon=True), threading.Thread(target=wants_the_gil)]
    for thread in threads:
        thread.start()
    try:
        msg = Image(height=100, width=100, encoding="rgb8", step=300, data=bytes(30000))
        for _ in range(150):
            publisher.publish(msg)
            time.sleep(0.01)
    finally:
        stop.set()
        threads[1].join()
        executor.shutdown()
        node.destroy_node()
    assert len(ran) > 50
    assert len(handed_over) < 1.2 * len(ran), f"{len(handed_over)} hand-overs for {len(ran)} callbacks"
