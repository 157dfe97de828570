// OpKernels of FixedApplySgd and FixedApplyAdam: validate every input, look up
// and lock the variables, then update them in place in one pass over the list
// (the device's part: FusedUpdateDevice, fused_update.h). On the CPU the pass
// is split into the core's element shards (tf_ops/core/cpu/
// fused_update_cpu.h) shared between the calling thread and helpers on
// TensorFlow's inter-op threads, as the unscale kernels do (NOTE [helpers] in
// fixed_loss_scale_cpu.cc); on a GPU it is one kernel launch
// (fused_update_gpu.cc).
//
// Variables: each resource is looked up, all their mutexes are taken in
// address order (each once), and each tensor is made exclusively owned
// before it is written, as TensorFlow's ResourceApply* kernels do
// (PrepareToUpdateVariable: a copy only where a read still shares the buffer
// or the variable is in copy-on-read mode). A variable or slot that appears
// twice is refused: the shards would race on it.
// (PrepareToUpdateVariable copies with Eigen on the CPU device's threads.)
#define EIGEN_USE_THREADS

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/platform/mutex.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tf_ops/core/cpu/fused_update_cpu.h"
#include "tf_ops/core/tensor_span.h"
#include "tf_ops/tf/kernels/fused_update.h"
#if GOOGLE_CUDA
#include "tf_ops/core/gpu/device_support.h"
#endif

namespace fixed_loss_scale {
namespace {

using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::Var;
using CPUDevice = Eigen::ThreadPoolDevice;

// One call's shards, shared by the caller and its helpers; a helper that
// starts after the call returned finds no shard left and touches nothing else.
struct UpdateCall {
  UpdateRule rule;
  const std::vector<UpdateTensor>* tensors;
  const std::vector<int64_t>* offsets;
  UpdateScalars scalars;
  ShardPlan plan;
  std::atomic<int64_t> next_shard{0};
  std::atomic<int64_t> shards_done{0};
  tensorflow::mutex mu;
  tensorflow::condition_variable all_done;

  void Work() {
    const int64_t total = offsets->back();
    for (int64_t shard = next_shard.fetch_add(1); shard < plan.num_shards;
         shard = next_shard.fetch_add(1)) {
      const int64_t begin = shard * plan.shard_bytes;  // elements (PlanUpdateShards)
      UpdateElementRange(rule, *tensors, *offsets, begin,
                         std::min(total, begin + plan.shard_bytes), scalars);
      if (shards_done.fetch_add(1, std::memory_order_acq_rel) + 1 == plan.num_shards) {
        tensorflow::mutex_lock lock(mu);
        all_done.notify_all();
      }
    }
  }
};

// Updates every element of `tensors`, on the calling thread and helpers.
void RunUpdate(OpKernelContext* context, UpdateRule rule,
               const std::vector<UpdateTensor>& tensors, const UpdateScalars& scalars) {
  const std::vector<int64_t> offsets = UpdateElementOffsets(tensors);
  tensorflow::thread::ThreadPool* pool =
      context->device()->tensorflow_cpu_worker_threads()->workers;
  const int64_t threads = pool == nullptr ? 1 : pool->NumThreads();
  const ShardPlan plan = PlanUpdateShards(rule, offsets.back(), threads);
  if (plan.num_shards <= 1) {
    UpdateElementRange(rule, tensors, offsets, 0, offsets.back(), scalars);
    return;
  }
  auto call = std::make_shared<UpdateCall>();
  call->rule = rule;
  call->tensors = &tensors;
  call->offsets = &offsets;
  call->scalars = scalars;
  call->plan = plan;
  std::function<void()> helper = [call]() { call->Work(); };
  std::function<void(std::function<void()>)>* runner = context->runner();
  for (int64_t i = 0; i < std::min(threads, plan.num_shards) - 1; ++i) {
    if (runner != nullptr) {
      (*runner)(helper);
    } else {
      pool->Schedule(helper);
    }
  }
  call->Work();
  tensorflow::mutex_lock lock(call->mu);
  while (call->shards_done.load(std::memory_order_acquire) < plan.num_shards) {
    call->all_done.wait(lock);
  }
}

// The resource lists of an op: var first, then its slots; `optional` (the
// last list) holds 0 or N variables.
struct Layout {
  std::vector<const char*> lists;
  bool last_is_optional;
  std::vector<const char*> scalars;  // float32 scalar inputs (ScalarFieldFor names)
};

}  // namespace

template <>
absl::Status FusedUpdateDevice<CPUDevice>::Prepare(OpKernelContext* context, Var* var) {
  return tensorflow::PrepareToUpdateVariable<CPUDevice, float>(context, var->tensor(),
                                                               var->copy_on_read_mode.load());
}

template <>
absl::Status FusedUpdateDevice<CPUDevice>::Run(OpKernelContext* context,
                                               const FusedUpdateInputs& inputs) {
  UpdateScalars scalars;
  scalars.unscale = inputs.unscale;
  for (const auto& [name, value] : inputs.scalars) {
    *ScalarFieldFor(&scalars, name) = value->scalar<float>()();
  }
  RunUpdate(context, inputs.rule, inputs.tensors, scalars);
  return absl::OkStatus();
}

namespace {

// The shared kernel: validation, locking, one FusedUpdateDevice<Device>::Run.
template <typename Device>
class FusedUpdateOp : public OpKernel {
 public:
  FusedUpdateOp(OpKernelConstruction* context, Layout layout)
      : OpKernel(context), layout_(std::move(layout)) {
    OP_REQUIRES_OK(context, context->GetAttr("decay", &decay_));
    OP_REQUIRES_OK(context, context->GetAttr("scalar_factors_first", &scalar_factors_first_));
  }

  // The rule, given whether the optional slot list is present.
  virtual UpdateRule Rule(bool with_optional) const = 0;

  void Compute(OpKernelContext* context) override {
    OpInputList grads;
    OP_REQUIRES_OK(context, context->input_list("grad", &grads));
    const int n = grads.size();
    std::vector<OpInputList> lists(layout_.lists.size());
    for (size_t l = 0; l < lists.size(); ++l) {
      OP_REQUIRES_OK(context, context->input_list(layout_.lists[l], &lists[l]));
      const bool may_be_empty = layout_.last_is_optional && l + 1 == lists.size();
      OP_REQUIRES(context, lists[l].size() == n || (may_be_empty && lists[l].size() == 0),
                  Invalid(layout_.lists[l], " holds ", lists[l].size(),
                          " variables; expected one per gradient (", n, ")",
                          may_be_empty ? " or none" : ""));
    }
    OP_REQUIRES(context, decay_.empty() || static_cast<int>(decay_.size()) == n,
                Invalid("decay has ", decay_.size(), " entries; expected none or ", n));
    if (layout_.last_is_optional && lists.back().size() == 0) lists.pop_back();
    FusedUpdateInputs inputs;
    inputs.rule = Rule(lists.size() == layout_.lists.size());
    OP_REQUIRES_OK(context, ReadScalars(context, &inputs));

    // Look up every resource, check it, and lock them all in address order.
    std::vector<tensorflow::core::RefCountPtr<Var>> vars(lists.size() * n);
    for (size_t l = 0; l < lists.size(); ++l) {
      for (int i = 0; i < n; ++i) {
        OP_REQUIRES_OK(context, Lookup(context, lists[l], l, i, &vars[l * n + i]));
      }
    }
    std::vector<Var*> order;
    for (const auto& var : vars) order.push_back(var.get());
    std::sort(order.begin(), order.end());
    for (size_t k = 1; k < order.size(); ++k) {
      OP_REQUIRES(context, order[k] != order[k - 1],
                  Invalid("the same variable is passed twice among ", ListNames(lists.size()),
                          ": ", order[k]->DebugString()));
    }
    std::vector<tensorflow::mutex_lock> locks;
    locks.reserve(order.size());
    for (Var* var : order) locks.emplace_back(*var->mu());

    for (size_t l = 0; l < lists.size(); ++l) {
      for (int i = 0; i < n; ++i) {
        OP_REQUIRES_OK(context, CheckVariable(*vars[l * n + i], l, i, grads[i]));
      }
    }
    // NOTE [fused update numerics]: nothing is written where the flag is false
    // (on a GPU the kernel reads it).
    using Dev = FusedUpdateDevice<Device>;
    constexpr bool kFlagInHostMemory = std::is_same<Device, CPUDevice>::value;
    if (kFlagInHostMemory && !inputs.all_finite->scalar<bool>()()) return;

    std::vector<UpdateTensor>& tensors = inputs.tensors;
    tensors.reserve(n);
    for (int i = 0; i < n; ++i) {
      if (grads[i].NumElements() == 0) continue;
      // NOTE [scalar factors] (tf_ops/core/fused_update_math.h).
      UpdateTensor tensor{grads[i].flat<float>().data(), {}, grads[i].NumElements(),
                          !decay_.empty() && decay_[i],
                          scalar_factors_first_ && grads[i].dims() >= 1};
      for (size_t l = 0; l < lists.size(); ++l) {
        Var* var = vars[l * n + i].get();
        OP_REQUIRES_OK(context, Dev::Prepare(context, var));
        tensor.state[l] = var->tensor()->flat<float>().data();
      }
      tensors.push_back(tensor);
    }
    if (!tensors.empty()) OP_REQUIRES_OK(context, Dev::Run(context, inputs));
  }

 protected:
  template <typename... Args>
  absl::Status Invalid(const Args&... args) const {
    return tensorflow::errors::InvalidArgument(type_string(), ": ", args...);
  }

 private:
  std::string ListNames(size_t count) const {
    std::string names;
    for (size_t l = 0; l < count; ++l) absl::StrAppend(&names, l ? ", " : "", layout_.lists[l]);
    return names;
  }

  // The flag and the per-step scalars, checked to be scalars (their values
  // are read by the device, FusedUpdateDevice::Run); the loss scale, in host
  // memory on every device, checked and turned into the unscaling factor.
  absl::Status ReadScalars(OpKernelContext* context, FusedUpdateInputs* inputs) const {
    const Tensor* loss_scale = nullptr;
    const Tensor* flag = nullptr;
    TF_RETURN_IF_ERROR(context->input("loss_scale", &loss_scale));
    TF_RETURN_IF_ERROR(context->input("all_finite", &flag));
    if (!tensorflow::TensorShapeUtils::IsScalar(flag->shape())) {
      return Invalid("all_finite must be a scalar, got shape ", flag->shape().DebugString());
    }
    inputs->all_finite = flag;
    for (const char* name : layout_.scalars) {
      const Tensor* value = nullptr;
      TF_RETURN_IF_ERROR(context->input(name, &value));
      if (!tensorflow::TensorShapeUtils::IsScalar(value->shape())) {
        return Invalid(name, " must be a scalar, got shape ", value->shape().DebugString());
      }
      inputs->scalars.emplace_back(name, value);
    }
    if (!tensorflow::TensorShapeUtils::IsScalar(loss_scale->shape())) {
      return Invalid("loss_scale must be a scalar, got shape ",
                     loss_scale->shape().DebugString());
    }
    const float scale = loss_scale->scalar<float>()();
    // NOTE [tensor loss scale range] (tf_ops/core/tensor_span.h): the factor
    // of FixedUnscaleGradsAndCheck.
    if (!IsValidTensorLossScale(scale)) {
      return Invalid("loss_scale must be a positive, finite, normal float32 (>= 2^-126), got ",
                     scale);
    }
    inputs->unscale = TensorReciprocalFactorFor(scale).f;
    return absl::OkStatus();
  }

  absl::Status Lookup(OpKernelContext* context, const OpInputList& list, size_t l, int i,
                      tensorflow::core::RefCountPtr<Var>* var) const {
    const Tensor& handle = list[i];
    if (!tensorflow::TensorShapeUtils::IsScalar(handle.shape())) {
      return Invalid(layout_.lists[l], "[", i, "] must be a scalar resource handle, got shape ",
                     handle.shape().DebugString());
    }
    const absl::Status found =
        tensorflow::LookupResource(context, handle.scalar<tensorflow::ResourceHandle>()(), var);
    if (!found.ok()) {
      return Invalid(layout_.lists[l], "[", i, "] is not an initialized variable: ",
                     found.message());
    }
    return absl::OkStatus();
  }

  absl::Status CheckVariable(Var& var, size_t l, int i, const Tensor& grad) const {
    const char* name = layout_.lists[l];
    if (!var.is_initialized) {
      return Invalid(name, "[", i, "] is not initialized: ", var.DebugString());
    }
    const Tensor& value = *var.tensor();
    if (value.dtype() != tensorflow::DT_FLOAT) {
      return Invalid(name, "[", i, "] has dtype ", tensorflow::DataTypeString(value.dtype()),
                     "; only float32 variables are updated by this op");
    }
    if (value.shape() != grad.shape()) {
      return Invalid(name, "[", i, "] has shape ", value.shape().DebugString(),
                     " but grad[", i, "] has shape ", grad.shape().DebugString());
    }
    return absl::OkStatus();
  }

  const Layout layout_;
  std::vector<bool> decay_;
  bool scalar_factors_first_ = true;
};

template <typename Device>
class FixedApplySgdOp : public FusedUpdateOp<Device> {
 public:
  explicit FixedApplySgdOp(OpKernelConstruction* context)
      : FusedUpdateOp<Device>(context, Layout{{"var", "momentums"}, true,
                                      {"clip", "lr", "momentum", "weight_decay",
                                       "weight_decay_lr"}}) {
    OP_REQUIRES_OK(context, context->GetAttr("nesterov", &nesterov_));
  }

  UpdateRule Rule(bool with_momentum) const override {
    if (!with_momentum) return UpdateRule::kSgd;
    return nesterov_ ? UpdateRule::kSgdNesterov : UpdateRule::kSgdMomentum;
  }

 private:
  bool nesterov_ = false;
};

template <typename Device>
class FixedApplyAdamOp : public FusedUpdateOp<Device> {
 public:
  explicit FixedApplyAdamOp(OpKernelConstruction* context)
      : FusedUpdateOp<Device>(context,
                      Layout{{"var", "m", "v", "vhat"}, true,
                             {"clip", "lr", "alpha", "one_minus_beta_1", "one_minus_beta_2",
                              "epsilon", "weight_decay", "weight_decay_lr"}}) {}

  UpdateRule Rule(bool amsgrad) const override {
    return amsgrad ? UpdateRule::kAdamAmsgrad : UpdateRule::kAdam;
  }
};

REGISTER_KERNEL_BUILDER(Name("FixedApplySgd").Device(tensorflow::DEVICE_CPU),
                        FixedApplySgdOp<CPUDevice>);
REGISTER_KERNEL_BUILDER(Name("FixedApplyAdam").Device(tensorflow::DEVICE_CPU),
                        FixedApplyAdamOp<CPUDevice>);

#if GOOGLE_CUDA
// NOTE [where the GPU kernels run] (tf_ops/core/gpu/device_support.h): the
// same load-time decision as the unscale ops' GPU kernels (which print its
// message), from the same device-code targets (GPU_DEFINES). The loss scale
// is read on the host, as by every op of this library; the flag and the
// per-step scalars stay in device memory, where the check and Keras's step
// compute them, and the kernel reads them there.
const bool gpu_kernels_registered = [] {
  const gpu::DeviceCodeTargets built{{FLS_CUDA_CUBIN_ARCHS}, FLS_CUDA_PTX_ARCH,
                                     FLS_CUDA_MIN_DRIVER, FLS_CUDA_PTX_MIN_DRIVER};
  if (!gpu::DecideGpuSupport(built, gpu::QueryGpuSystem()).register_gpu_kernels) return false;
  const auto register_op = [](const char* op_name,
                              OpKernel* (*make_kernel)(OpKernelConstruction*)) {
    ::tensorflow::kernel_factory::OpKernelRegistrar registrar(
        ::tensorflow::register_kernel::Name(op_name)
            .Device(tensorflow::DEVICE_GPU)
            .HostMemory("loss_scale")
            .Build(),
        absl::StrCat(op_name, "Op<Eigen::GpuDevice>"), make_kernel);
    (void)registrar;
  };
  register_op("FixedApplySgd", [](OpKernelConstruction* context) -> OpKernel* {
    return new FixedApplySgdOp<Eigen::GpuDevice>(context);
  });
  register_op("FixedApplyAdam", [](OpKernelConstruction* context) -> OpKernel* {
    return new FixedApplyAdamOp<Eigen::GpuDevice>(context);
  });
  return true;
}();
#endif  // GOOGLE_CUDA

}  // namespace
}  // namespace fixed_loss_scale
