# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROS_STAMP := install/.synseg_ros_built
# rclpy processes need the message's libraries from the colcon install space (read by the loader at start-up).
# Its Python folder also holds a copy of synseg_model/synseg_ros taken at build time, so it goes on PYTHONPATH
# only for processes started from the repository root, where the checkout's code comes first (the demo; the
# tests add it themselves, see tests/conftest.py).
ROS_LIBS := LD_LIBRARY_PATH=$(CURDIR)/install/synseg_ros/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}
ROS_PYTHONPATH := PYTHONPATH=$$(echo $(CURDIR)/install/synseg_ros/lib/python3*/site-packages)
# A Fast DDS shared-memory segment large enough for camera frames (the default 512 KB is not).
FASTDDS := FASTDDS_DEFAULT_PROFILES_FILE=$(CURDIR)/config/fastdds_loopback.xml
SANDBOX := scripts/sandbox

.PHONY: setup test test-fast demo shapes clean

setup: $(STAMP) $(ROS_STAMP)

# Re-installs only when the pins or the package metadata change.
$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The ROS 2 package (message + node), rebuilt when its definition or the installed wheels change.
$(ROS_STAMP): $(STAMP) msg/SegmentationMasks.msg CMakeLists.txt package.xml scripts/build_ros_package.sh
	scripts/build_ros_package.sh
	touch $@

test: setup
	$(ROS_LIBS) $(SANDBOX) $(PY) -m pytest tests

# The same without the tests marked slow (pytest.ini): whole pipelines, several processes, ROS load tests.
test-fast: setup
	$(ROS_LIBS) $(SANDBOX) $(PY) -m pytest tests -m "not slow"

# Generated scenes -> the node on the offline default model -> overlays and a summary in demo_out/.
demo: setup
	$(PY) -m training.shapes generate --out demo_out/scenes --train 0 --val 24 --seed 1
	$(ROS_LIBS) $(ROS_PYTHONPATH) $(FASTDDS) $(SANDBOX) $(PY) -m synseg_ros.demo --scenes demo_out/scenes --out demo_out

# The shapes world end to end (issue 7), from nothing: data, CLIP, dense decoder, MCCL variants, results table
# and figure in runs/shapes/, and the offline default model synseg_model/weights/synseg-shapes.safetensors.
# It stops after stage 1 if the CLIP fails its zero-shot gate; SHAPES_ARGS passes more options (`--set k=v`).
shapes: $(STAMP)
	rm -rf runs/shapes
	time $(PY) -m training.shapes run --out runs/shapes --install-default $(SHAPES_ARGS)

clean:
	rm -rf $(VENV) build install log demo_out
