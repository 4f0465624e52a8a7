#!/usr/bin/env bash
# Builds the synseg_ros ament package (the SegmentationMasks message plus the Python packages) with colcon
# from the ROS 2 wheels in a virtual environment (what `make setup` runs, once per ROS 2 distribution).
# In a real ROS 2 workspace none of this is needed: a plain `colcon build` does it. Here the install space
# links to the checkout's files (--symlink-install), so its code, launch file and configs are never stale.
#
#   scripts/build_ros_package.sh [VENV BASE]    default: .venv and the repository root, i.e. build/ and install/;
#                                               with BASE, everything goes into BASE/{src,build,install,log}
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(cd "${1:-$root/.venv}" && pwd)"
if [ $# -ge 2 ]; then
    mkdir -p "$2"
    base="$(cd "$2" && pwd)"
    src="$base/src" build="$base/build" install="$base/install" logs="$base/log"
else
    src="$root/build/src" build="$root/build" install="$root/install" logs="$root/log"
fi

"$venv/bin/python" "$root/scripts/fix_ros_wheel_cmake.py" --prefix "$venv"

# CMake refuses to export a target whose include folders lie inside the source folder, and numpy's include
# folder lies in the venv inside this repository; so colcon builds from a folder of links to the package's
# parts instead of from the repository root.
rm -rf "$src"
mkdir -p "$src/synseg_ros"
for item in package.xml CMakeLists.txt msg synseg_ros synseg_model launch config scripts resource; do
    ln -s "$root/$item" "$src/synseg_ros/$item"
done

export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
cd "$root"
colcon --log-base "$logs" build --symlink-install --base-paths "$src" --build-base "$build" \
    --install-base "$install" --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF
