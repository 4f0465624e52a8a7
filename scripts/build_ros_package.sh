#!/usr/bin/env bash
# Builds the synseg_ros ament package (the SegmentationMasks message plus the Python packages) with colcon
# from the ROS 2 wheels in the virtual environment, into build/ and install/ (what `make setup` runs).
# In a real ROS 2 workspace none of this is needed: a plain `colcon build` does it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv}"
venv="$(cd "$venv" && pwd)"

"$venv/bin/python" "$root/scripts/fix_ros_wheel_cmake.py" --prefix "$venv"

# CMake refuses to export a target whose include folders lie inside the source folder, and numpy's include
# folder lies in .venv/ inside this repository; so colcon builds from a folder of links to the package's
# parts instead of from the repository root.
src="$root/build/src/synseg_ros"
rm -rf "$root/build/src"
mkdir -p "$src"
for item in package.xml CMakeLists.txt msg synseg_ros synseg_model launch config scripts resource; do
    ln -s "$root/$item" "$src/$item"
done

export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
cd "$root"
colcon build --base-paths build/src --build-base build --install-base install \
    --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF
