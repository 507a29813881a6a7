// Backend factories: ProcessGroupGloo on CPU (its transport device chosen
// from the environment), and what a build without c10d or NCCL says instead.
#include "dist/context.h"
#include "dist/group_state.h"

#include <cstdlib>

#include "core/error.h"

#ifdef MEMO_WITH_DIST
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

namespace memo::dist {

bool available() {
#ifdef MEMO_WITH_DIST
  return true;
#else
  return false;
#endif
}

bool nccl_available() {
#ifdef MEMO_WITH_NCCL
  return true;
#else
  return false;
#endif
}

std::string unavailable_reason() {
  if (available()) return {};
  return "this memo was built without c10d and Gloo, so it runs one process only (CMake needs a libtorch built with "
         "USE_DISTRIBUTED and Gloo's headers, Debian's libgloo-dev: run scripts/setup.sh and rebuild)";
}

#ifdef MEMO_WITH_DIST

namespace {

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1" || host == "[::1]";
}

}  // namespace

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                     int size, std::chrono::milliseconds timeout,
                                                     const std::string& master_addr) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // As torch.distributed does: GLOO_SOCKET_IFNAME names the interface;
  // without it, all ranks on this host's loopback when the master is there
  // (every test, one-node jobs), else the address this host's name resolves to.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    std::string name(ifname);
    name = name.substr(0, name.find(','));
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
  } else if (is_loopback(master_addr)) {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
}

#ifndef MEMO_WITH_NCCL
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                     std::chrono::milliseconds, int) {
  throw InputError(
      "this memo was built without NCCL (it needs a CUDA libtorch and nccl.h from the nvidia-nccl Python package); "
      "use --device cpu for Gloo");
}
#endif

#endif  // MEMO_WITH_DIST

}  // namespace memo::dist
