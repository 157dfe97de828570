
# ---- FLS_WITH_CUDA=1 (from BUILD.cuda.tpl) ----
# The CUDA headers in TensorFlow's wheel (FLS_TF_CUDA_INCLUDE; the Makefile's
# -I$(TF_CUDA_INCLUDE)), for the g++-compiled GPU adapter and registrations.
cc_library(
    name = "tf_cuda_headers",
    hdrs = glob(["cuda_include/**"]),
    includes = ["cuda_include"],
)
