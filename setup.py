"""pip-installable Python packages of SynSeg (the ROS 2 package is built by colcon from CMakeLists.txt)."""
from setuptools import find_packages, setup

setup(
    name="synseg",
    version="0.1.0",
    description="Open-vocabulary semantic segmentation (SynSeg) for robots",
    packages=find_packages(include=["synseg_model*", "synseg_ros*", "training*"]),
    include_package_data=True,
    package_data={"synseg_model": ["model_configs/*.yaml", "model_configs/*.json", "weights/*"],
                  "training": ["datasets/*.yaml", "datasets/specs/*.yaml", "data/*"]},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "open_clip_torch", "numpy", "opencv-python-headless",
                      "PyYAML", "safetensors", "tqdm", "huggingface_hub", "rosbags"],
    # For ROS 2 tools (ros2 launch/run) when installed with pip; colcon installs the same from CMakeLists.txt.
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/synseg_ros"]),
        ("share/synseg_ros", ["package.xml"]),
        ("share/synseg_ros/launch", ["launch/segment.launch.py"]),
        ("share/synseg_ros/config", ["config/synseg.yaml", "config/fastdds_loopback.xml"]),
        ("share/synseg_ros/msg", ["msg/SegmentationMasks.msg"]),          # read by segment_bag (rosbags)
    ],
    entry_points={"console_scripts": [
        "synseg_node = synseg_ros.node:main",
        "synseg_image_folder_publisher = synseg_ros.image_folder_publisher:main",
        "segment_bag = synseg_ros.segment_bag:main",
    ]},
)
