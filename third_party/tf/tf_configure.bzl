"""@local_config_tf: the installed TensorFlow (and CUDA settings) as a Bazel repository.

Nothing is downloaded and nothing is detected here: configure.sh detects once and
writes .configure.bazelrc (imported by .bazelrc), whose --action_env values
reach this rule's environment. The same values are in config.mk for Make.

  @local_config_tf//:tf_header_lib            TensorFlow's headers + its -D defines
  @local_config_tf//:libtensorflow_framework  the shared library to link against
  @local_config_tf//:build_config.bzl         FLS_WITH_CUDA, the flag sets etc. for BUILD files
and, when FLS_WITH_CUDA=1 (BUILD.cuda.tpl):
  @local_config_tf//:tf_cuda_headers          the CUDA headers in TensorFlow's wheel
(no CUDA runtime: the library uses TensorFlow's, NOTE [one CUDA runtime] in
the Makefile)
"""

_TF_ENV = [
    "TF_HEADER_DIR",
    "TF_SHARED_LIBRARY_DIR",
    "TF_SHARED_LIBRARY_NAME",
    "TF_CXX11_ABI_FLAG",
    "TF_DEFINES",
]

_CUDA_ENV = [
    "FLS_WITH_CUDA",
    "FLS_NVCC",
    "FLS_CUDA_TOOLCHAIN",
    "FLS_CLANG",
    "FLS_CUDA12_PATH",
    "FLS_CLANG_CUDA_FLAGS",
    "FLS_PYTHON",
    "FLS_CUDA_ARCHS",
    "FLS_CUDA_PTX_ARCH",
    "FLS_TF_CUDA_INCLUDE",
]

# configure.sh's flag sets, shared with the Makefile (config.mk).
_FLAG_ENV = [
    "FLS_CXX_FLAGS",
    "FLS_TEST_CXX_FLAGS",
    "FLS_SANITIZER_FLAGS",
    "FLS_GPU_DEFINES",
    "FLS_NVCC_FLAGS",
]

def _split(flags):
    return [flag for flag in flags.split(" ") if flag]

def _tf_configure_impl(ctx):
    env = ctx.os.environ
    missing = [name for name in _TF_ENV + ["FLS_CXX_FLAGS"] if not env.get(name)]
    if missing:
        fail("%s not set: run ./configure.sh (it writes .configure.bazelrc, " % ", ".join(missing) +
             "which .bazelrc imports), or build with `make bazel`")

    header_dir = env["TF_HEADER_DIR"]
    lib_name = env["TF_SHARED_LIBRARY_NAME"]
    lib_path = env["TF_SHARED_LIBRARY_DIR"] + "/" + lib_name
    for path in [header_dir, lib_path]:
        if not ctx.path(path).exists:
            fail("%s does not exist: rerun ./configure.sh" % path)

    # Symlinks, not copies: TensorFlow ships ~18k headers (430 MB).
    ctx.symlink(header_dir, "include")
    ctx.symlink(lib_path, lib_name)

    with_cuda = env.get("FLS_WITH_CUDA", "0") == "1"
    cuda_build = ""
    if with_cuda:
        cuda_include = env.get("FLS_TF_CUDA_INCLUDE", "")
        toolchain = env.get("FLS_CUDA_TOOLCHAIN", "")
        tools = [env.get("FLS_CLANG", ""), env.get("FLS_CUDA12_PATH", "")] if toolchain == "clang" else [env.get("FLS_NVCC", "")]
        for path in [cuda_include] + tools:
            if not path or not ctx.path(path).exists:
                fail("FLS_WITH_CUDA=1 but %r does not exist: rerun ./configure.sh" % path)
        ctx.symlink(cuda_include, "cuda_include")
        cuda_build = ctx.read(Label("//third_party/tf:BUILD.cuda.tpl"))

    defines = [flag[2:] for flag in env["TF_DEFINES"].split(" ") if flag.startswith("-D")]
    ctx.template("BUILD", Label("//third_party/tf:BUILD.tpl"), {
        "%{TF_DEFINES}": repr(defines),
        "%{TF_SHARED_LIBRARY_NAME}": lib_name,
        "%{CUDA_TARGETS}": cuda_build,
    }, executable = False)

    ctx.file("build_config.bzl", "\n".join([
        '"""Written by tf_configure.bzl from the environment configure.sh set."""',
        "FLS_WITH_CUDA = %s" % with_cuda,
        "FLS_NVCC = %s" % repr(env.get("FLS_NVCC", "")),
        "FLS_CUDA_TOOLCHAIN = %s" % repr(env.get("FLS_CUDA_TOOLCHAIN", "")),
        "FLS_CLANG = %s" % repr(env.get("FLS_CLANG", "")),
        "FLS_CUDA12_PATH = %s" % repr(env.get("FLS_CUDA12_PATH", "")),
        "FLS_CLANG_CUDA_FLAGS = %s" % repr(env.get("FLS_CLANG_CUDA_FLAGS", "")),
        "FLS_PYTHON = %s" % repr(env.get("FLS_PYTHON", "")),
        "FLS_CUDA_ARCHS = %s" % repr([arch for arch in env.get("FLS_CUDA_ARCHS", "").split(" ") if arch]),
        "FLS_CUDA_PTX_ARCH = %s" % repr(env.get("FLS_CUDA_PTX_ARCH", "")),
        "FLS_TF_CUDA_INCLUDE = %s" % repr(env.get("FLS_TF_CUDA_INCLUDE", "")),
        "FLS_CXX_FLAGS = %s" % repr(_split(env.get("FLS_CXX_FLAGS", ""))),
        "FLS_TEST_CXX_FLAGS = %s" % repr(_split(env.get("FLS_TEST_CXX_FLAGS", ""))),
        "FLS_SANITIZER_FLAGS = %s" % repr(_split(env.get("FLS_SANITIZER_FLAGS", ""))),
        "FLS_GPU_DEFINES = %s" % repr(_split(env.get("FLS_GPU_DEFINES", ""))),
        "FLS_NVCC_FLAGS = %s" % repr(env.get("FLS_NVCC_FLAGS", "")),
        "",
    ]), executable = False)

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = _TF_ENV + _CUDA_ENV + _FLAG_ENV,
    local = True,
)
