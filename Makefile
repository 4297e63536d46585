# Thin wrapper over CMake. `make demo` and `make test` install what is missing first.
BUILD   ?= build
JOBS    ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all setup configure build test demo deb gpu gpu-bundle clean presets

all: build

setup:
	@scripts/setup.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

configure: $(BUILD)/build.ninja

build: setup configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 1200

demo: build
	scripts/demo.sh $(BUILD)

# The Debian package $(BUILD)/ratio_<version>_amd64.deb: binaries, dashboard, systemd unit, default
# /etc/ratio/ratiod.yaml, man pages (packaging/CMakeLists.txt). Install with `apt install ./FILE.deb`.
deb: build
	cd $(BUILD) && cpack -G DEB

# Submit a built-in preset to the running ratiod ($$RATIO_SERVER, default http://127.0.0.1:8080), as the
# study did with its defconfigs: make defconfig-gpt2-ratio-ablation-reciprocal, make defconfig-demo, ...
defconfig-%: build
	$(BUILD)/bin/ratio submit --preset $*

presets: build
	$(BUILD)/bin/ratio presets

# GPU machines: PyTorch's LibTorch plus the Debian libraries unpacked by scripts/gpu-bundle.sh.
gpu-bundle:
	scripts/gpu-bundle.sh

gpu:
	scripts/gpu-build.sh build-gpu

clean:
	rm -rf $(BUILD)
