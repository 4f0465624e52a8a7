# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The ROS 2 package (message + node), built by colcon from the ROS 2 Kilted wheels of .venv into install/.
ROS_STAMP := install/.synseg_ros_built
ROS_PACKAGE := msg/SegmentationMasks.msg CMakeLists.txt package.xml scripts/build_ros_package.sh \
	$(wildcard synseg_ros/*.py launch/*.py scripts/synseg_node scripts/image_folder_publisher scripts/segment_bag)
# rclpy processes need the message's libraries from the colcon install space (read by the loader at start-up).
# Its Python folder (links to the checkout's synseg_ros and synseg_model, plus the generated msg/ module) goes
# on PYTHONPATH for processes started from the repository root (the demo; the tests add it themselves).
# vision_msgs (built from ../shared/ros2cli, below) keeps its libraries in its own install space.
ROS_LIBS := LD_LIBRARY_PATH=$(CURDIR)/install/synseg_ros/lib:$(CURDIR)/build/ros2cli/install/vision_msgs/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}
ROS_PYTHONPATH := PYTHONPATH=$$(echo $(CURDIR)/install/synseg_ros/lib/python3*/site-packages)
# The second ROS 2 distribution the ROS tests run on: Jazzy, in a light environment of its ROS wheels that
# reads the model's packages from .venv (requirements-jazzy.txt), with the package built into build/jazzy/.
JAZZY_VENV := .venv-jazzy
JAZZY_PY := $(JAZZY_VENV)/bin/python
JAZZY_STAMP := $(JAZZY_VENV)/.installed
JAZZY_BASE := build/jazzy
JAZZY_ROS_STAMP := $(JAZZY_BASE)/install/.synseg_ros_built
JAZZY_MESSAGES := $(JAZZY_BASE)/ros2cli
JAZZY_ENV := SYNSEG_ROS_INSTALL=$(CURDIR)/$(JAZZY_BASE)/install SYNSEG_MESSAGES_INSTALL=$(CURDIR)/$(JAZZY_MESSAGES)/install \
	LD_LIBRARY_PATH=$(CURDIR)/$(JAZZY_BASE)/install/synseg_ros/lib:$(CURDIR)/$(JAZZY_MESSAGES)/install/vision_msgs/lib
ROS_TESTS := $(wildcard tests/test_ros_*.py)
# `ros2` and `launch`, built from their sources in ../shared/ros2cli where it exists (a user's clone has none:
# the tests that need them skip), installed into .venv with build/ros2cli as the install base.
ROS2CLI := ../shared/ros2cli
ROS2CLI_STAMP := build/ros2cli/.installed
# The Jazzy environment gets what the node's detections need from it: vision_msgs, built with Jazzy's wheels,
# and the message_filters wheel (not launch or the `ros2` command line: those are Kilted's).
JAZZY_MESSAGES_STAMP := $(JAZZY_MESSAGES)/.installed
# A Fast DDS shared-memory segment large enough for camera frames (the default 512 KB is not).
FASTDDS := FASTDDS_DEFAULT_PROFILES_FILE=$(CURDIR)/config/fastdds_loopback.xml
SANDBOX := scripts/sandbox

.PHONY: setup lint test test-kilted-ros test-rest test-fast demo shapes shapes-table clean

setup: $(STAMP) $(ROS_STAMP) $(JAZZY_ROS_STAMP) $(if $(wildcard $(ROS2CLI)),$(ROS2CLI_STAMP) $(JAZZY_MESSAGES_STAMP))

# Re-installs only when the pins or the package metadata change. --no-compile: Python compiles a module when it
# is first imported, and most of torch's 17,000 files never are (compiling them all took 90 s of CPU here).
$(PY):
	python3 -m venv $(VENV)

$(STAMP): requirements.txt setup.py | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Rebuilt when its definition, its files or the installed wheels change.
$(ROS_STAMP): $(STAMP) $(ROS_PACKAGE)
	scripts/build_ros_package.sh
	touch $@

# Only the ROS 2 wheels and colcon; the non-ROS pins of requirements.txt constrain what they pull in. It needs
# .venv to exist (the .pth names its site-packages), not its packages: both installs run at once.
$(JAZZY_STAMP): requirements-jazzy.txt requirements.txt | $(PY)
	test -x $(JAZZY_PY) || python3 -m venv $(JAZZY_VENV)
	grep -v '^ros-' requirements.txt > $(JAZZY_VENV)/constraints.txt
	$(JAZZY_PY) -m pip install --quiet --no-compile -r requirements-jazzy.txt -c $(JAZZY_VENV)/constraints.txt
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
		> "$$($(JAZZY_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/synseg_model_deps.pth"
	touch $@

$(JAZZY_ROS_STAMP): $(JAZZY_STAMP) $(ROS_PACKAGE)
	scripts/build_ros_package.sh $(JAZZY_VENV) $(JAZZY_BASE)
	touch $@

$(ROS2CLI_STAMP): $(ROS_STAMP) $(wildcard $(ROS2CLI)/wheels/*.whl)
	bash $(ROS2CLI)/install.sh $(VENV) build/ros2cli
	touch $@

# As install.sh builds it for Kilted; $(JAZZY_ROS_STAMP) has re-pointed the wheels' CMake files first.
$(JAZZY_MESSAGES_STAMP): $(JAZZY_ROS_STAMP) $(wildcard $(ROS2CLI)/wheels/message_filters-*.whl)
	$(JAZZY_PY) -m pip install --quiet --no-index --no-deps $(ROS2CLI)/wheels/message_filters-*.whl
	PATH="$(CURDIR)/$(JAZZY_VENV)/bin:$$PATH" AMENT_PREFIX_PATH="$(CURDIR)/$(JAZZY_VENV)" \
		CMAKE_PREFIX_PATH="$(CURDIR)/$(JAZZY_VENV)" $(JAZZY_VENV)/bin/colcon --log-base $(JAZZY_MESSAGES)/log \
		build --base-paths $(ROS2CLI)/src/vision_msgs --build-base $(JAZZY_MESSAGES)/build \
		--install-base $(JAZZY_MESSAGES)/install \
		--cmake-args -DPython3_EXECUTABLE=$(CURDIR)/$(JAZZY_PY) -DBUILD_TESTING=OFF
	touch $@

# pyflakes, pycodestyle errors, import order and bugbear (ruff.toml); .ci/run runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every test on Kilted, then the ROS tests again on Jazzy, in two lanes at once: Kilted's ROS tests (marker
# `ros`: they spend much of their time waiting on processes and messages) beside the rest of Kilted's tests
# (models, training, evaluation: a busy core), then Jazzy's. Each lane's output is printed whole when it ends
# (--output-sync). The two distributions' set-ups build side by side too.
test:
	$(MAKE) --no-print-directory -j2 setup
	$(MAKE) --no-print-directory -j2 --output-sync=target test-kilted-ros test-rest

test-kilted-ros: setup
	$(ROS_LIBS) $(SANDBOX) $(PY) -m pytest tests -m ros

test-rest: setup
	$(ROS_LIBS) $(SANDBOX) $(PY) -m pytest tests -m "not ros"
	$(JAZZY_ENV) $(SANDBOX) $(JAZZY_PY) -m pytest $(ROS_TESTS)

# The same without the tests marked slow (pytest.ini: over 10 s on the development machine): whole pipelines,
# several processes, ROS load tests. Every run's summary names an unmarked test over 10 s (tests/conftest.py).
test-fast: setup
	$(ROS_LIBS) $(SANDBOX) $(PY) -m pytest tests -m "not slow"

# Generated scenes -> the node on the offline default model -> overlays and a summary in demo_out/.
demo: setup
	$(PY) -m training.shapes generate --out demo_out/scenes --train 0 --val 24 --seed 1
	$(ROS_LIBS) $(ROS_PYTHONPATH) $(FASTDDS) $(SANDBOX) $(PY) -m synseg_ros.demo --scenes demo_out/scenes --out demo_out

# The offline default model rebuilt (docs/shapes.md): data, dense decoder and the rows the model comes from, in
# runs/shapes/, then the model in synseg_model/weights/synseg-shapes.safetensors. Stage 1 (the CLIP, an hour on
# two cores) is the committed model's, gated but not retrained, as its card's stage1_from records for the
# shipped file; `make shapes SHAPES_CLIP=` trains it too, from nothing. It stops if the CLIP fails its zero-shot
# gate; SHAPES_ARGS passes more options (`--set k=v`).
SHAPES_CLIP ?= --set stage1_from=synseg_model/weights/synseg-shapes.safetensors
shapes: $(STAMP)
	rm -rf runs/shapes
	time $(PY) -m training.shapes run --out runs/shapes --install-default --rows robot $(SHAPES_CLIP) $(SHAPES_ARGS)

# Every row of the results table (docs/shapes_results.md), keeping what `make shapes` made in runs/shapes/.
shapes-table: $(STAMP)
	time $(PY) -m training.shapes run --out runs/shapes --reuse --install-default $(SHAPES_CLIP) $(SHAPES_ARGS)

clean:
	rm -rf $(VENV) $(JAZZY_VENV) build install log demo_out
