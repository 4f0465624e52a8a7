"""Start the synseg node: ros2 launch synseg_ros segment.launch.py image_topic:=/camera/image_raw

Arguments: image_topic, params_file (default: this package's config/synseg.yaml), checkpoint, device,
image_transport, use_depth, depth_topic, camera_info_topic, namespace, autostart, fastdds_profile and
camera_folder. checkpoint, device, image_transport and use_depth override the parameter file only when they are
given (empty: the file's value). autostart:=true (the default, as nav2's lifecycle manager does) configures and
activates the managed node at start-up; autostart:=false leaves it unconfigured for `ros2 lifecycle set`. A
missing params_file, or the node exiting with an error, ends the launch with an error.

Every process started here gets the Fast DDS profile ``fastdds_profile`` (default: the one the environment names,
else this package's, whose shared-memory segment holds a camera frame; the node publishes frame-sized overlays
too). ``camera_folder:=DIR`` also starts a camera stand-in publishing that folder's images on ``image_topic``.
"""
from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.launch_context import LaunchContext
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from synseg_ros.middleware import profile_variable

# Launch arguments that set the node parameter of the same name, and only when given.
OVERRIDES = ("checkpoint", "device", "image_transport", "use_depth")
PROFILE_VARIABLE = profile_variable()


def fail_with_the_node(event: ProcessExited, context: LaunchContext) -> None:
    """A node that exits with an error ends the launch with one (a supervisor sees the failure)."""
    if event.returncode != 0:
        raise RuntimeError(f"{event.action.name} exited with code {event.returncode}")


def node_with_parameters(context: LaunchContext) -> list:
    """The node, with the parameter file and then the launch arguments that were given, and the camera stand-in
    when ``camera_folder`` is given; both with the Fast DDS profile.

    Raises:
        RuntimeError: the parameter file does not exist (launch_ros would only warn and start the node on its
            defaults: a robot running the wrong vocabulary); launch ends with it, naming the path.
    """
    params_file = LaunchConfiguration("params_file").perform(context)
    if not Path(params_file).is_file():
        raise RuntimeError(f"params_file {params_file}: no such file")
    given: dict[str, object] = {name: value for name in OVERRIDES
                                if (value := LaunchConfiguration(name).perform(context))}
    if "use_depth" in given:
        given["use_depth"] = given["use_depth"] == "true"
    profile = LaunchConfiguration("fastdds_profile").perform(context)
    env = {PROFILE_VARIABLE: profile} if profile else {}
    node = Node(
        package="synseg_ros",
        executable="synseg_node",
        name="synseg",
        namespace=LaunchConfiguration("namespace"),
        parameters=[params_file, {**given, "autostart": LaunchConfiguration("autostart")}],
        remappings=[("image", LaunchConfiguration("image_topic")), ("depth", LaunchConfiguration("depth_topic")),
                    ("camera_info", LaunchConfiguration("camera_info_topic"))],
        output="screen",
        emulate_tty=True,
        additional_env=env,
    )
    actions = [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=fail_with_the_node))]
    camera_folder = LaunchConfiguration("camera_folder").perform(context)
    if camera_folder:
        actions.append(Node(package="synseg_ros", executable="image_folder_publisher", name="camera",
                            namespace=LaunchConfiguration("namespace"), parameters=[{"folder": camera_folder}],
                            remappings=[("image_raw", LaunchConfiguration("image_topic"))], output="screen",
                            emulate_tty=True, additional_env=env))
    return actions


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
        DeclareLaunchArgument("image_transport", default_value="", choices=["", "raw", "compressed"],
                              description="raw, or compressed (<image_topic>/compressed); empty: the parameter file's"),
        DeclareLaunchArgument("use_depth", default_value="", choices=["", "true", "false"],
                              description="also depth and camera info -> detections_3d and points; empty: the "
                                          "parameter file's"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/depth/image_rect_raw",
                              description="sensor_msgs/Image depth registered to the colour image (16UC1 mm or "
                                          "32FC1 m), e.g. /camera/camera/aligned_depth_to_color/image_raw"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/depth/camera_info",
                              description="sensor_msgs/CameraInfo of the depth image"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate the node at start-up"),
        DeclareLaunchArgument("fastdds_profile",
                              default_value=EnvironmentVariable(PROFILE_VARIABLE, default_value=PathJoinSubstitution(
                                  [FindPackageShare("synseg_ros"), "config", "fastdds_loopback.xml"])),
                              description=f"Fast DDS profile of every process started here ({PROFILE_VARIABLE}); "
                                          "empty: Fast DDS's defaults (camera frames over 512 KB get lost)"),
        DeclareLaunchArgument("camera_folder", default_value="",
                              description="a folder of images to publish on image_topic at 10 Hz (a camera "
                                          "stand-in); empty: none"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=node_with_parameters)])
