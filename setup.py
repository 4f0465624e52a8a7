"""pip-installable Python packages of SynSeg (the ROS 2 package is built by colcon from CMakeLists.txt)."""
from setuptools import find_packages, setup

setup(
    name="synseg",
    version="0.1.0",
    description="Open-vocabulary semantic segmentation (SynSeg) for robots",
    packages=find_packages(include=["synseg_model*", "synseg_ros*", "training*"]),
    include_package_data=True,
    package_data={"synseg_model": ["model_configs/*.yaml", "model_configs/*.json", "weights/*"]},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "open_clip_torch", "numpy", "opencv-python-headless",
                      "PyYAML", "safetensors", "tqdm"],
    entry_points={"console_scripts": []},
)
