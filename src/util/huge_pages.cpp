#include "util/huge_pages.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>

namespace engram {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;
}  // namespace

Expected<HugePageBuffer> HugePageBuffer::allocate(size_t bytes) {
  HugePageBuffer b;
  if (bytes == 0) return b;
  // One extra huge page of slack, so that the data can start on a boundary.
  b.region_size_ = bytes + kHugePage;
  void* region = mmap(nullptr, b.region_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED)
    return make_error("cannot allocate ", std::to_string(bytes), " bytes: ", std::strerror(errno));
  b.region_ = region;
  const auto base = reinterpret_cast<uintptr_t>(region);
  b.data_ = reinterpret_cast<uint8_t*>((base + kHugePage - 1) & ~(kHugePage - 1));
  b.size_ = bytes;
#ifdef MADV_HUGEPAGE
  madvise(b.data_, bytes, MADV_HUGEPAGE);  // advice only: without THP the memory still works
#endif
  return b;
}

HugePageBuffer::HugePageBuffer(HugePageBuffer&& other) noexcept { *this = std::move(other); }

HugePageBuffer& HugePageBuffer::operator=(HugePageBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    region_ = std::exchange(other.region_, nullptr);
    region_size_ = std::exchange(other.region_size_, 0);
  }
  return *this;
}

HugePageBuffer::~HugePageBuffer() { release(); }

void HugePageBuffer::make_read_only() {
  if (region_) mprotect(region_, region_size_, PROT_READ);
}

void HugePageBuffer::release() {
  if (region_) munmap(region_, region_size_);
  region_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

bool huge_pages_available() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string setting;
  std::getline(in, setting);
  return setting.find("[always]") != std::string::npos || setting.find("[madvise]") != std::string::npos;
}

uint64_t mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

}  // namespace engram
