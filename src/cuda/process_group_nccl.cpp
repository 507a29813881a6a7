// ProcessGroupNCCL for the ranks of a CUDA job: one communicator per group,
// bound to this rank's device (LOCAL_RANK) and connected at once, so a
// missing peer shows at start-up rather than at the first collective.
// Compiled in MEMO_CUDA builds that found nccl.h (MEMO_WITH_NCCL).
#include "dist/comm.h"
#include "dist/group_state.h"

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

namespace memo::dist {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int size, std::chrono::milliseconds timeout, int device_index) {
  const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  c10::cuda::set_device(device.index());
  auto options = c10d::ProcessGroupNCCL::Options::create();
  // The watchdog aborts a collective stuck this long (and, by default, the process).
  options->timeout = timeout;
  auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
  backend->setBoundDeviceId(device);
  backend->eagerConnectSingleDevice(device);
  return backend;
}

}  // namespace memo::dist
