"""Start the synseg node: ros2 launch synseg_ros segment.launch.py image_topic:=/camera/image_raw

Arguments: image_topic, params_file (default: this package's config/synseg.yaml), checkpoint, device,
namespace and autostart. checkpoint and device override the parameter file only when they are given (empty:
the file's value). autostart:=true (the default, as nav2's lifecycle manager does) configures and activates
the managed node at start-up; autostart:=false leaves it unconfigured for `ros2 lifecycle set`.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

# Launch arguments that set the node parameter of the same name, and only when given.
OVERRIDES = ("checkpoint", "device")


def node_with_parameters(context: LaunchContext) -> list[Node]:
    """The node, with the parameter file and then the launch arguments that were given."""
    given = {name: value for name in OVERRIDES if (value := LaunchConfiguration(name).perform(context))}
    return [Node(
        package="synseg_ros",
        executable="synseg_node",
        name="synseg",
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {**given, "autostart": LaunchConfiguration("autostart")}],
        remappings=[("image", LaunchConfiguration("image_topic"))],
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to segment"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("synseg_ros"), "config",
                                                                  "synseg.yaml"]),
                              description="YAML file with the node's parameters"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="the model: a name (python -m synseg_model.pretrained list, e.g. "
                                          "clipseg-rd64-refined), hf-hub:ORG/REPO or a .safetensors file; "
                                          "empty: the parameter file's"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu, cuda or cuda:N; empty: the parameter file's"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate the node at start-up"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=node_with_parameters)])
