"""Start the synseg node: ros2 launch synseg_ros segment.launch.py image_topic:=/camera/image_raw

Arguments: image_topic, params_file (default: this package's config/synseg.yaml), checkpoint, device and
namespace. The checkpoint and device given here override the parameter file.
"""
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to segment"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("synseg_ros"), "config",
                                                                  "synseg.yaml"]),
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="SynSeg checkpoint (.safetensors); empty: the offline default model"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
    ]
    node = Node(
        package="synseg_ros",
        executable="synseg_node",
        name="synseg",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"),
                    {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device")}],
        remappings=[("image", LaunchConfiguration("image_topic"))],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
