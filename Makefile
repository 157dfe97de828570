# tf-fixed-loss-scale: user targets. Flags come only from config.mk, written by
# configure.sh (Bazel reads the same values from .configure.bazelrc).
#   make            build the op library into python/fixed_loss_scale/
#   make demo       set up .venv, build, install, run demo/demo.py
#   make test       set up .venv, build, install, run the whole test suite
#   make wheel      build dist/*.whl containing the library (the pip build path)
#   make sdist      build dist/*.tar.gz, the sources pip builds a wheel from
#   make bazel      build the same library with Bazel (through bazelisk)
SHELL := /bin/bash
.DEFAULT_GOAL := all

VENV := .venv
VENV_PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements-installed
# The Python to build against; a different one can be given: make PYTHON=python3
PYTHON ?= $(VENV_PY)
PYTEST_ARGS ?=

PKG_DIR := python/fixed_loss_scale
LIB := $(PKG_DIR)/_fixed_loss_scale_ops.so
BUILD_DIR := build

ifeq ($(PYTHON),$(VENV_PY))
CONFIG_DEPS := $(VENV_STAMP)
endif

# config.mk is (re)made before anything else whenever it is missing or stale.
ifeq ($(filter clean venv sdist gpu-check,$(MAKECMDGOALS)),)
-include config.mk
endif
config.mk: configure.sh $(CONFIG_DEPS)
	PYTHON=$(PYTHON) ./configure.sh

$(VENV_STAMP): requirements.txt
	@test -x $(VENV_PY) || python3 -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -r requirements.txt
	@touch $@

.PHONY: all venv install demo test wheel sdist bazel clean
venv: $(VENV_STAMP)

# ---- the op library -------------------------------------------------------
CXX ?= g++
# CXX_FLAGS, GPU_DEFINES and NVCC_FLAGS come from config.mk (configure.sh), which
# Bazel's tf_ops/BUILD reads too; only paths are added here. TensorFlow's
# headers (and the CUDA headers in its wheel) are system headers: a warning in
# the build output is then one of ours.
CXXFLAGS_COMMON := $(CXX_FLAGS) -fPIC -I. -isystem $(TF_INCLUDE) $(TF_DEFINES)
CPU_CXXFLAGS := $(CXXFLAGS_COMMON)
LDFLAGS_TF := -shared -L$(TF_LIBDIR) -l:$(TF_LIBNAME) -Wl,-rpath,'$$ORIGIN/../tensorflow'

# tf_ops/core/ includes no TensorFlow header (its objects are compiled without
# TensorFlow's include path, so one that did would not build); tf_ops/tf/ is the
# only code that includes TensorFlow.
CORE_CPU_SRCS := tf_ops/core/cpu/multi_tensor_scale_cpu.cc \
                 tf_ops/core/cpu/simd_avx2.cc \
                 tf_ops/core/cpu/simd_avx512.cc \
                 tf_ops/core/cpu/simd_avx512_bf16.cc \
                 tf_ops/core/c_api.cc
# The fused optimizer updates: built with -ffp-contract=off, since a contracted
# a*b+c would change their bits (NOTE [fused update numerics] in
# tf_ops/core/fused_update_math.h).
FUSED_CPU_SRCS := tf_ops/core/cpu/fused_update_cpu.cc \
                  tf_ops/core/cpu/fused_update_avx2.cc \
                  tf_ops/core/cpu/fused_update_avx512.cc
TF_SRCS := tf_ops/tf/ops/fixed_loss_scale_ops.cc \
           tf_ops/tf/kernels/fixed_loss_scale_kernels.cc \
           tf_ops/tf/kernels/fixed_loss_scale_cpu.cc \
           tf_ops/tf/ops/fused_update_ops.cc \
           tf_ops/tf/kernels/fused_update_kernels.cc
FUSED_OBJS := $(patsubst %.cc,$(BUILD_DIR)/%.o,$(FUSED_CPU_SRCS))
$(FUSED_OBJS): CXX_FLAGS += -ffp-contract=off
CORE_OBJS := $(patsubst %.cc,$(BUILD_DIR)/%.o,$(CORE_CPU_SRCS)) $(FUSED_OBJS)
CPU_OBJS := $(CORE_OBJS) $(patsubst %.cc,$(BUILD_DIR)/%.o,$(TF_SRCS))
HEADERS := $(wildcard tf_ops/core/*.h tf_ops/core/cpu/*.h tf_ops/core/gpu/*.h tf_ops/tf/*.h tf_ops/tf/kernels/*.h)

$(BUILD_DIR)/tf_ops/core/%.o: tf_ops/core/%.cc $(HEADERS) config.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CXX_FLAGS) -fPIC -I. $(TF_DEFINES) -c $< -o $@
$(BUILD_DIR)/tf_ops/tf/%.o: tf_ops/tf/%.cc $(HEADERS) config.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CPU_CXXFLAGS) -c $< -o $@

# ---- CUDA -----------------------------------------------------------------------
# With WITH_CUDA=1 the library also holds the GPU kernels (docs/GPU.md).
# Each .cu file of tf_ops/core/gpu/ (multi_tensor_scale.cu, fused_update.cu)
# becomes one host object holding its fatbinary, by the toolchain configure.sh
# chose (CUDA_TOOLCHAIN):
#   clang  tools/build_cuda_object.sh: clang-19 + the CUDA 12.9 wheels' ptxas,
#          cubins for $(CUDA_ARCHS) plus $(CUDA_PTX_ARCH) PTX (NOTE [clang
#          device code] in tools/cuda12_toolchain.sh)
#   nvcc   $(NVCC) $(NVCC_FLAGS)
# g++ compiles the TensorFlow adapter and the kernel registrations with
# GOOGLE_CUDA against the CUDA headers in TensorFlow's wheel.
#
# NOTE [one CUDA runtime]: the library links no CUDA runtime of its own. Its
# cuda* and __cuda* calls (kernel registration, launches, the table copy) are
# left undefined and bind at load to the cudart trampolines that
# libtensorflow_framework.so.2 exports, i.e. to the libcudart.so.12 TensorFlow
# itself loads, in the contexts and streams TensorFlow made. A private static
# runtime would be a second runtime state in the process, beside TensorFlow's;
# the driver API is shared either way. tests/test_gpu_build.py checks the built
# library: no cuda* symbol defined, every one bound to libtensorflow_framework
# at load.
# Where no libcudart.so.12 is installed (a CPU-only machine) TensorFlow's
# trampolines return errors and the GPU kernels are never placed.
#   make host-emulation-test   the kernel body run on the host for every
#                              (block, thread) of its launches (g++ only)
#   make device-support-test   where the GPU kernels are registered (g++ only)
#   make launcher-driver       tf_ops/tests/launcher_driver.cu with the launcher,
#                              no TensorFlow (clang route: against the wheel's
#                              libcudart.so.12)
#   make gpu-check-bundle      .gpucheck/: the CUDA 12 objects the GPU check needs
#   make gpu-check             tools/gpu_check.sh: every GPU check, TF-free
.PHONY: host-emulation-test launcher-driver gpu-check
GPU_OBJS :=
GPU_LDFLAGS :=
HOST_EMULATION_TEST := $(BUILD_DIR)/tests/host_emulation_test
LAUNCHER_DRIVER := $(BUILD_DIR)/tests/launcher_driver
GPU_CHECK_ARGS ?=
ifeq ($(WITH_CUDA),1)
# One host object per .cu file: the unscale launchers and the fused update's.
CUDA_LAUNCHER_OBJS := $(BUILD_DIR)/tf_ops/core/gpu/multi_tensor_scale.o \
                      $(BUILD_DIR)/tf_ops/core/gpu/fused_update.o
DEVICE_SUPPORT_OBJ := $(BUILD_DIR)/tf_ops/core/gpu/device_support.o
GPU_OBJS := $(CUDA_LAUNCHER_OBJS) $(DEVICE_SUPPORT_OBJ) $(BUILD_DIR)/tf_ops/tf/kernels/fixed_loss_scale_gpu.o \
            $(BUILD_DIR)/tf_ops/tf/kernels/fused_update_gpu.o
GPU_LDFLAGS := -ldl
$(BUILD_DIR)/tf_ops/tf/kernels/fixed_loss_scale_kernels.o \
$(BUILD_DIR)/tf_ops/tf/kernels/fixed_loss_scale_gpu.o \
$(BUILD_DIR)/tf_ops/tf/kernels/fused_update_kernels.o \
$(BUILD_DIR)/tf_ops/tf/kernels/fused_update_gpu.o: \
    CPU_CXXFLAGS := $(CXXFLAGS_COMMON) $(GPU_DEFINES) -isystem $(TF_CUDA_INCLUDE)
ifeq ($(CUDA_TOOLCHAIN),clang)
$(CUDA_LAUNCHER_OBJS): $(BUILD_DIR)/%.o: %.cu $(HEADERS) config.mk \
                       tools/build_cuda_object.sh tools/make_fatbin.py
	@mkdir -p $(dir $@)
	CLANG=$(CLANG) CUDA12_PATH=$(CUDA12_PATH) CUDA_ARCHS="$(CUDA_ARCHS)" \
	CUDA_PTX_ARCH=$(CUDA_PTX_ARCH) PYTHON=$(PYTHON_BIN) CLANG_CUDA_FLAGS="$(CLANG_CUDA_FLAGS)" \
	    tools/build_cuda_object.sh $< $@ -I.
# The driver is host code only: g++ against the wheel's runtime headers and
# its libcudart.so.12 (the major version TensorFlow loads).
$(LAUNCHER_DRIVER): tf_ops/tests/launcher_driver.cu $(CUDA_LAUNCHER_OBJS) tf_ops/tests/gpu_kernel_cases.h \
                    tf_ops/tests/fused_update_cases.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(TEST_CXX_FLAGS) -I. -isystem $(CUDA12_PATH)/include -x c++ $< -x none \
	    $(CUDA_LAUNCHER_OBJS) -o $@ -L$(CUDA12_PATH)/lib64 -l:libcudart.so.12 \
	    -Wl,-rpath,$(CUDA12_PATH)/lib64
else
$(CUDA_LAUNCHER_OBJS): $(BUILD_DIR)/%.o: %.cu $(HEADERS) config.mk
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -I. -c $< -o $@
$(LAUNCHER_DRIVER): tf_ops/tests/launcher_driver.cu $(CUDA_LAUNCHER_OBJS) tf_ops/tests/gpu_kernel_cases.h \
                    tf_ops/tests/fused_update_cases.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -I. -o $@ $< $(CUDA_LAUNCHER_OBJS) -ldl
endif
$(DEVICE_SUPPORT_OBJ): tf_ops/core/gpu/device_support.cc $(HEADERS) config.mk
	@mkdir -p $(dir $@)
	$(CXX) $(CXX_FLAGS) -fPIC -I. -c $< -o $@
launcher-driver: $(LAUNCHER_DRIVER)
else
ifeq ($(WITH_CUDA),0)
$(info make: WITH_CUDA=0 in config.mk (no CUDA toolchain, or FLS_WITH_CUDA=0): CPU kernels only)
endif
launcher-driver:
	@echo "make $@: needs a CUDA toolchain; see docs/GPU.md (rerun ./configure.sh)" >&2; exit 1
endif
# TF-free and config.mk-free: runs on a GPU machine without TensorFlow.
# gpu-check-bundle (here, clang route configured) puts what that machine needs
# of the CUDA 12 build in .gpucheck/ (git-ignored; send it with the sources).
.PHONY: gpu-check-bundle
gpu-check:
	tools/gpu_check.sh $(GPU_CHECK_ARGS)
gpu-check-bundle: config.mk
	tools/gpu_check.sh --prepare
$(HOST_EMULATION_TEST): tf_ops/tests/host_emulation_test.cc tf_ops/tests/gpu_kernel_cases.h \
                        tf_ops/tests/checked_memory.h $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(TEST_CXX_FLAGS) -I. -o $@ $<
host-emulation-test: $(HOST_EMULATION_TEST)
	$(HOST_EMULATION_TEST)
# make fused-update-emulation-test: the fused update's kernel body against
# the CPU core it must match bit for bit, so linked with that core; no
# contraction anywhere (NOTE [fused update numerics]).
FUSED_EMULATION_TEST := $(BUILD_DIR)/tests/fused_update_emulation_test
$(FUSED_EMULATION_TEST): tf_ops/tests/fused_update_emulation_test.cc tf_ops/tests/checked_memory.h \
                         tf_ops/tests/fused_update_cases.h \
                         tf_ops/tests/gpu_kernel_cases.h $(CORE_CPU_SRCS) $(FUSED_CPU_SRCS) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXX_FLAGS) -ffp-contract=off -I. -o $@ $< $(CORE_CPU_SRCS) $(FUSED_CPU_SRCS)
.PHONY: fused-update-emulation-test
fused-update-emulation-test: $(FUSED_EMULATION_TEST)
	$(FUSED_EMULATION_TEST)
# NOTE [where the GPU kernels run]: the load-time decision for drivers and GPUs
# no test machine has (g++ only, runs in CPU-only builds too).
DEVICE_SUPPORT_TEST := $(BUILD_DIR)/tests/device_support_test
$(DEVICE_SUPPORT_TEST): tf_ops/tests/device_support_test.cc tf_ops/core/gpu/device_support.cc $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(TEST_CXX_FLAGS) -I. -o $@ $< tf_ops/core/gpu/device_support.cc -ldl
.PHONY: device-support-test
device-support-test: $(DEVICE_SUPPORT_TEST)
	$(DEVICE_SUPPORT_TEST)
# ---- end CUDA -------------------------------------------------------------------

$(LIB): $(CPU_OBJS) $(GPU_OBJS) config.mk
	$(CXX) -o $@ $(CPU_OBJS) $(GPU_OBJS) $(LDFLAGS_TF) $(GPU_LDFLAGS)

all: $(LIB)

# The package installed into .venv in editable mode: `import fixed_loss_scale`
# works from any directory and always sees the library just built.
INSTALL_STAMP := $(VENV)/.fixed-loss-scale-installed
$(INSTALL_STAMP): setup.py pyproject.toml tools/fls_build_backend.py $(VENV_STAMP)
	$(VENV_PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@
install: $(LIB) $(INSTALL_STAMP)

demo: install
	$(VENV_PY) demo/demo.py
	$(VENV_PY) demo/integrations.py

test: install
	$(VENV_PY) -m pytest tests $(PYTEST_ARGS)

# Both go through the PEP 517 backend (tools/fls_build_backend.py) that pip uses:
# `make wheel` is `pip wheel --no-build-isolation .` against $(PYTHON)'s
# TensorFlow (the library just built, as configured), requiring that minor
# version; `make sdist` packs the sources only (no configure, no TensorFlow).
WHEEL_DIR ?= dist
SDIST_DIR ?= dist
wheel: $(LIB)
	$(PYTHON) -m pip wheel --quiet --no-deps --no-build-isolation -w $(WHEEL_DIR) .
	@ls -1 $(WHEEL_DIR)/*.whl
sdist: $(CONFIG_DEPS)
	$(PYTHON) tools/fls_build_backend.py sdist $(SDIST_DIR)

clean:
	rm -rf $(BUILD_DIR) dist *.egg-info python/*.egg-info $(LIB) config.mk .configure.bazelrc \
	       $(PKG_DIR)/_build_info.json $(INSTALL_STAMP)

# ---- Benchmarks ----------------------------------------------------------------
# make bench           the full benchmark (docs/BENCHMARKS.md): table on stdout and
#                      in docs/bench/results.txt, results in docs/bench/results.json
#                      and docs/bench/results.png
# make simd-test-lib   the CPU core alone (no TensorFlow) behind a C entry point,
#                      loaded by tests/test_simd_paths.py to compare every CPU path
.PHONY: bench simd-test-lib
BENCH_ARGS ?=
bench: install
	@mkdir -p docs/bench
	$(VENV_PY) -m benchmarks --json docs/bench/results.json \
	    --plot docs/bench/results.png $(BENCH_ARGS)
	$(VENV_PY) -m benchmarks --report docs/bench/results.json > docs/bench/results.txt

SIMD_TEST_LIB := $(BUILD_DIR)/tests/libfls_simd_paths.so
$(SIMD_TEST_LIB): tf_ops/tests/simd_paths_shim.cc $(CORE_CPU_SRCS) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXX_FLAGS) -fPIC -shared -I. -o $@ \
	    tf_ops/tests/simd_paths_shim.cc $(CORE_CPU_SRCS)
simd-test-lib: $(SIMD_TEST_LIB)
# ---- end Benchmarks -------------------------------------------------------------

# ---- Bazel ----------------------------------------------------------------------
# make bazel   the same library built by Bazel through bazelisk, copied to
#              build/bazel/_fixed_loss_scale_ops.so (docs/BAZEL.md). Installs
#              Bazel/bazelisk when absent; config.mk first, as configure.sh also
#              writes the .configure.bazelrc that Bazel reads.
BAZEL_ARGS ?=
bazel: config.mk
	tools/bazel_build.sh $(BAZEL_ARGS)
# ---- end Bazel ------------------------------------------------------------------

# ---- Reliability ----------------------------------------------------------------
# make sanitizer-test   the CPU core (tf_ops/core/cpu, no TensorFlow)
#                       built with ASan+UBSan into a standalone test
#                       (tf_ops/tests/cpu_core_sanitizer_test.cc), run once per
#                       CPU path; unsupported paths fall back to the best one.
.PHONY: sanitizer-test
SANITIZER_TEST := $(BUILD_DIR)/tests/cpu_core_sanitizer_test
$(SANITIZER_TEST): tf_ops/tests/cpu_core_sanitizer_test.cc $(CORE_CPU_SRCS) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(SANITIZER_FLAGS) -I. -o $@ \
	    tf_ops/tests/cpu_core_sanitizer_test.cc $(CORE_CPU_SRCS)
sanitizer-test: $(SANITIZER_TEST)
	@for path in scalar avx2 avx512; do \
	  FIXED_LOSS_SCALE_CPU_PATH=$$path $(SANITIZER_TEST) || exit 1; \
	done
# ---- end Reliability ------------------------------------------------------------
