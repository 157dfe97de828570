// OpKernels for FixedScaleLoss, FixedUnscaleGrads, FixedUnscaleGradsAndCheck,
// FixedCheckGrads and FixedUnscaleGradsByTensor: validate the scale (an attr,
// or a scalar input), forward each input buffer to its output when TensorFlow
// allows (in place) or allocate a new one, then make one MultiTensorScale<Device>
// (MultiTensorCheck<Device>, with or without the writes) call for the whole
// list.
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/node_def_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/types.h"
#include "tf_ops/tf/kernels/fixed_loss_scale.h"
#include "tf_ops/tf/loss_scale_errors.h"
#if GOOGLE_CUDA
#include "tf_ops/core/gpu/device_support.h"
#endif

namespace fixed_loss_scale {
namespace {

using tensorflow::DataType;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

absl::StatusOr<DType> ToDType(DataType dtype) {
  switch (dtype) {
    case tensorflow::DT_HALF:
      return DType::kHalf;
    case tensorflow::DT_BFLOAT16:
      return DType::kBFloat16;
    case tensorflow::DT_FLOAT:
      return DType::kFloat;
    case tensorflow::DT_DOUBLE:
      return DType::kDouble;
    default:
      return tensorflow::errors::InvalidArgument(
          "unsupported dtype ", tensorflow::DataTypeString(dtype),
          "; expected half, bfloat16, float or double");
  }
}

// What PrepareOutput needs to know of an input that is fixed for the kernel's
// lifetime (the node's dtype and the kernel's memory types), worked out once in
// the constructor instead of on every call: the per-input work is what keeps a
// call over many small tensors above the one-op floor (docs/BENCHMARKS.md).
struct InputInfo {
  DType dtype;
  bool same_memory_type;  // input and output memory types are equal
};

// Forwards input `index` to output `index` when its buffer may be reused, else
// allocates; returns the span that scales it.
//
// NOTE [direct forwarding]: OpKernelContext::forward_input scans every output's
// forwarding reservation on each call, so forwarding all n inputs of one op
// costs O(n^2) (measured: docs/BENCHMARKS.md, "Kernel design A/B runs").
// Reservations exist only on nodes that Grappler's scoped-allocator pass marked
// (the `_forward_input` and `_scoped_allocator` attrs). For unmarked nodes
// (`direct`), the same checks as
// forward_input (not a ref, sole owner of its buffer, same memory type,
// compatible allocator attributes) are made here in O(1) and the input tensor
// is set as the output, sharing its buffer; anything else takes TF's path.
absl::StatusOr<TensorSpan> PrepareOutput(OpKernelContext* context, int index, InputInfo info,
                                         bool direct) {
  const Tensor& input = context->input(index);
  if (direct && info.same_memory_type && !context->input_is_ref(index) &&
      input.RefCountIsOne() &&
      context->output_alloc_attr(index).IsEqualOrLessRestrictiveThan(
          context->input_alloc_attr(index))) {
    context->set_output(index, input);
    return TensorSpan{input.data(), input.data(), input.NumElements(), info.dtype};
  }
  Tensor* output = nullptr;
  TF_RETURN_IF_ERROR(
      context->forward_input_or_allocate_output({index}, index, input.shape(), &output));
  return TensorSpan{input.data(), output->data(), input.NumElements(), info.dtype};
}

// Shared by the three ops: the forwarding state of inputs [0, num_scaled),
// each scaled into the output of the same index.
class ScaleOpBase : public OpKernel {
 public:
  ScaleOpBase(OpKernelConstruction* context, int num_scaled) : OpKernel(context) {
    direct_forwarding_ = !tensorflow::HasNodeAttr(def(), "_forward_input") &&
                         !tensorflow::HasNodeAttr(def(), "_scoped_allocator");
    inputs_.reserve(num_scaled);
    for (int i = 0; i < num_scaled; ++i) {
      absl::StatusOr<DType> dtype = ToDType(input_type(i));
      OP_REQUIRES_OK(context, dtype.status());
      inputs_.push_back({*dtype, input_memory_types()[i] == output_memory_types()[i]});
    }
  }

 protected:
  // Forwards or allocates outputs [0, num_scaled) and returns the spans of the
  // non-empty ones.
  absl::Status PrepareSpans(OpKernelContext* context, std::vector<TensorSpan>* spans) {
    spans->reserve(inputs_.size());
    for (int i = 0; i < static_cast<int>(inputs_.size()); ++i) {
      absl::StatusOr<TensorSpan> span = PrepareOutput(context, i, inputs_[i], direct_forwarding_);
      TF_RETURN_IF_ERROR(span.status());
      if (span->num_elements > 0) spans->push_back(*span);
    }
    return absl::OkStatus();
  }

  // NOTE [inline]: not "expensive", so TF's executor runs the op on the thread
  // that made it ready instead of handing it to another inter-op thread when
  // other nodes are ready too. Large lists lose nothing: the kernel spreads
  // them over threads itself (MultiTensorScale). Measured call by call on small
  // and large lists: docs/BENCHMARKS.md, "Kernel design A/B runs".
  bool IsExpensive() override { return false; }

  // See NOTE [direct forwarding].
  bool direct_forwarding_ = false;
  std::vector<InputInfo> inputs_;
};

// FixedScaleLoss (kReciprocal false: the factor is loss_scale) and
// FixedUnscaleGrads (true: 1/loss_scale): input i scaled into output i, by the
// validated `loss_scale` attr.
template <typename Device, bool kReciprocal>
class ScaleListOp : public ScaleOpBase {
 public:
  explicit ScaleListOp(OpKernelConstruction* context)
      : ScaleOpBase(context, context->num_inputs()) {
    OP_REQUIRES_OK(context, context->GetAttr("loss_scale", &loss_scale_));
    // NOTE [loss scale range] (tf_ops/core/tensor_span.h).
    OP_REQUIRES(context, IsValidLossScale(loss_scale_),
                InvalidLossScaleAttr(type_string(), loss_scale_));
  }

  void Compute(OpKernelContext* context) override {
    std::vector<TensorSpan> spans;
    OP_REQUIRES_OK(context, PrepareSpans(context, &spans));
    if (spans.empty()) return;
    OP_REQUIRES_OK(context, MultiTensorScale<Device>()(
                                context, spans,
                                kReciprocal ? ReciprocalFactorFor(loss_scale_)
                                            : ScaleFactorFor(loss_scale_)));
  }

 private:
  float loss_scale_ = 1.0f;
};

template <typename Device>
using FixedScaleLossOp = ScaleListOp<Device, false>;
template <typename Device>
using FixedUnscaleGradsOp = ScaleListOp<Device, true>;

// The value of the loss_scale input `index` (in host memory on every device),
// validated (NOTE [tensor loss scale range], tf_ops/core/tensor_span.h).
absl::StatusOr<float> TensorLossScale(OpKernelContext* context, int index) {
  const Tensor& loss_scale = context->input(index);
  const std::string& op = context->op_kernel().type_string();
  if (!tensorflow::TensorShapeUtils::IsScalar(loss_scale.shape())) {
    return LossScaleNotScalar(op, loss_scale.shape().DebugString());
  }
  const float value = loss_scale.scalar<float>()();
  if (!IsValidTensorLossScale(value)) return InvalidTensorLossScale(op, value);
  return value;
}

// Allocates the two scalar outputs of a check, all_finite and sum_of_squares,
// at `index` and `index + 1`.
absl::Status AllocateCheckOutputs(OpKernelContext* context, int index, Tensor** all_finite,
                                  Tensor** sum_of_squares) {
  TF_RETURN_IF_ERROR(context->allocate_output(index, tensorflow::TensorShape({}), all_finite));
  return context->allocate_output(index + 1, tensorflow::TensorShape({}), sum_of_squares);
}

// FixedUnscaleGradsAndCheck: grads (inputs [0, n)) unscaled into outputs
// [0, n) as FixedUnscaleGrads does, by the loss_scale input (the last input,
// never forwarded; in host memory on every device, so it is validated here),
// and the all_finite and sum_of_squares scalars (outputs n and n + 1) written
// by the same MultiTensorCheck<Device> call.
template <typename Device>
class FixedUnscaleGradsAndCheckOp : public ScaleOpBase {
 public:
  explicit FixedUnscaleGradsAndCheckOp(OpKernelConstruction* context)
      : ScaleOpBase(context, context->num_inputs() - 1) {
    OP_REQUIRES_OK(context, context->GetAttr("with_sum_of_squares", &with_sum_of_squares_));
  }

  void Compute(OpKernelContext* context) override {
    const int num_grads = context->num_inputs() - 1;
    const absl::StatusOr<float> value = TensorLossScale(context, num_grads);
    OP_REQUIRES_OK(context, value.status());
    Tensor* all_finite = nullptr;
    Tensor* sum_of_squares = nullptr;
    OP_REQUIRES_OK(context, AllocateCheckOutputs(context, num_grads, &all_finite, &sum_of_squares));
    std::vector<TensorSpan> spans;
    OP_REQUIRES_OK(context, PrepareSpans(context, &spans));
    OP_REQUIRES_OK(context, MultiTensorCheck<Device>()(
                                context, spans, TensorReciprocalFactorFor(*value),
                                CheckWrites::kScaledValues, with_sum_of_squares_,
                                all_finite->scalar<bool>().data(),
                                sum_of_squares->scalar<float>().data()));
  }

 private:
  bool with_sum_of_squares_ = false;
};

// FixedUnscaleGradsByTensor: FixedUnscaleGradsAndCheck's unscaled grads, by
// the same validated loss_scale input, through the plain MultiTensorScale call
// (no check).
template <typename Device>
class FixedUnscaleGradsByTensorOp : public ScaleOpBase {
 public:
  explicit FixedUnscaleGradsByTensorOp(OpKernelConstruction* context)
      : ScaleOpBase(context, context->num_inputs() - 1) {}

  void Compute(OpKernelContext* context) override {
    const absl::StatusOr<float> value = TensorLossScale(context, context->num_inputs() - 1);
    OP_REQUIRES_OK(context, value.status());
    std::vector<TensorSpan> spans;
    OP_REQUIRES_OK(context, PrepareSpans(context, &spans));
    if (spans.empty()) return;
    OP_REQUIRES_OK(context,
                   MultiTensorScale<Device>()(context, spans, TensorReciprocalFactorFor(*value)));
  }

  // NOTE [dispatched in the apply branch]: this op divides the gradients
  // inside a skip's apply branch (scaling.unscale_deferred), where every
  // gradient becomes ready at once, when the branch's predicate arrives. Run
  // inline (NOTE [inline]), the executor's thread would take every unscale
  // back to back before any update reads one, and the quotients would go out
  // to memory and come back. Reported expensive, as TF's own elementwise
  // kernels are, each is handed to an inter-op thread, whose own queue runs
  // the update that reads it next, while it is in cache; TF's executor still
  // runs it inline where its measured cost is small. Measured on Keras 3 Adam
  // steps: docs/BENCHMARKS.md, "Overflow safety".
  bool IsExpensive() override { return true; }
};

// FixedCheckGrads: FixedUnscaleGradsAndCheck's all_finite and sum_of_squares
// (outputs 0 and 1) from the grads (inputs [0, n)) and the loss_scale input
// (input n), one MultiTensorCheck<Device> call; no gradient is forwarded or
// written. Empty grads are left out of the spans; with none left the outputs
// are still written (true, and 0 or the "not computed" NaN).
template <typename Device>
class FixedCheckGradsOp : public OpKernel {
 public:
  explicit FixedCheckGradsOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("with_sum_of_squares", &with_sum_of_squares_));
    const int num_grads = context->num_inputs() - 1;
    dtypes_.reserve(num_grads);
    for (int i = 0; i < num_grads; ++i) {
      absl::StatusOr<DType> dtype = ToDType(input_type(i));
      OP_REQUIRES_OK(context, dtype.status());
      dtypes_.push_back(*dtype);
    }
  }

  void Compute(OpKernelContext* context) override {
    const int num_grads = static_cast<int>(dtypes_.size());
    const absl::StatusOr<float> value = TensorLossScale(context, num_grads);
    OP_REQUIRES_OK(context, value.status());
    Tensor* all_finite = nullptr;
    Tensor* sum_of_squares = nullptr;
    OP_REQUIRES_OK(context, AllocateCheckOutputs(context, 0, &all_finite, &sum_of_squares));
    std::vector<TensorSpan> spans;
    spans.reserve(num_grads);
    for (int i = 0; i < num_grads; ++i) {
      const Tensor& grad = context->input(i);
      if (grad.NumElements() > 0) {
        spans.push_back(TensorSpan{grad.data(), nullptr, grad.NumElements(), dtypes_[i]});
      }
    }
    OP_REQUIRES_OK(context, MultiTensorCheck<Device>()(
                                context, spans, TensorReciprocalFactorFor(*value),
                                CheckWrites::kNothing, with_sum_of_squares_,
                                all_finite->scalar<bool>().data(),
                                sum_of_squares->scalar<float>().data()));
  }

  // NOTE [inline] (ScaleOpBase).
  bool IsExpensive() override { return false; }

 private:
  bool with_sum_of_squares_ = false;
  std::vector<DType> dtypes_;
};

// Registers the ops' kernels for `Device`: their "T" takes the four storage
// types of the core (DType). The ops with a loss_scale input read it on the
// host (HostMemory; on CPU all memory is host memory).
template <typename Device>
void RegisterKernels(const char* device_type, const char* device_name) {
  const tensorflow::DataType types[] = {tensorflow::DT_HALF, tensorflow::DT_BFLOAT16,
                                        tensorflow::DT_FLOAT, tensorflow::DT_DOUBLE};
  static_assert(sizeof(types) / sizeof(types[0]) == kNumDTypes, "one TF type per DType");
  const auto register_op = [&](const char* op_name, auto make_kernel,
                                const char* host_input = nullptr) {
    ::tensorflow::register_kernel::Name builder(op_name);
    builder.Device(device_type).TypeConstraint("T", types);
    if (host_input != nullptr) builder.HostMemory(host_input);
    ::tensorflow::kernel_factory::OpKernelRegistrar registrar(
        builder.Build(), absl::StrCat(op_name, "Op<", device_name, ">"), make_kernel);
    (void)registrar;
  };
  register_op("FixedScaleLoss", [](OpKernelConstruction* context) -> OpKernel* {
    return new FixedScaleLossOp<Device>(context);
  });
  register_op("FixedUnscaleGrads", [](OpKernelConstruction* context) -> OpKernel* {
    return new FixedUnscaleGradsOp<Device>(context);
  });
  register_op(
      "FixedUnscaleGradsAndCheck",
      [](OpKernelConstruction* context) -> OpKernel* {
        return new FixedUnscaleGradsAndCheckOp<Device>(context);
      },
      "loss_scale");
  register_op(
      "FixedUnscaleGradsByTensor",
      [](OpKernelConstruction* context) -> OpKernel* {
        return new FixedUnscaleGradsByTensorOp<Device>(context);
      },
      "loss_scale");
  register_op(
      "FixedCheckGrads",
      [](OpKernelConstruction* context) -> OpKernel* {
        return new FixedCheckGradsOp<Device>(context);
      },
      "loss_scale");
}

const bool cpu_kernels_registered = [] {
  RegisterKernels<Eigen::ThreadPoolDevice>(tensorflow::DEVICE_CPU, "Eigen::ThreadPoolDevice");
  return true;
}();

}  // namespace

#if GOOGLE_CUDA
namespace {

// What configure.sh built the device code for (GPU_DEFINES).
gpu::DeviceCodeTargets BuiltDeviceCode() {
  gpu::DeviceCodeTargets targets;
  targets.cubin_archs = {FLS_CUDA_CUBIN_ARCHS};
  targets.ptx_arch = FLS_CUDA_PTX_ARCH;
  targets.min_driver = FLS_CUDA_MIN_DRIVER;
  targets.ptx_min_driver = FLS_CUDA_PTX_MIN_DRIVER;
  return targets;
}

// NOTE [where the GPU kernels run] (tf_ops/core/gpu/device_support.h): the GPU
// kernels are registered, at load, only where the device code can run.
const bool gpu_kernels_registered = [] {
  const gpu::GpuSupport support = gpu::DecideGpuSupport(BuiltDeviceCode(), gpu::QueryGpuSystem());
  if (!support.message.empty()) std::fprintf(stderr, "%s\n", support.message.c_str());
  if (!support.register_gpu_kernels) return false;
  RegisterKernels<Eigen::GpuDevice>(tensorflow::DEVICE_GPU, "Eigen::GpuDevice");
  return true;
}();

}  // namespace
#endif  // GOOGLE_CUDA

}  // namespace fixed_loss_scale
