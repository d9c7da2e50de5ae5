// Anonymous memory on 2 MiB boundaries, advised as transparent huge pages.
//
// Streaming a gigabyte through 4 KiB pages costs a TLB miss every 4 KiB; with
// huge pages the same read touches 512 times fewer translations. Used for the
// weight copy (MappedFile, LoadMode::kCopy) and by `bench roofline`, so that
// the bandwidth it reports is the one the weights can get.
#pragma once

#include <cstddef>
#include <cstdint>

#include "util/status.h"

namespace engram {

class HugePageBuffer {
 public:
  // `bytes` of zeroed, writable memory; the error names the size.
  static Expected<HugePageBuffer> allocate(size_t bytes);

  HugePageBuffer() = default;
  HugePageBuffer(HugePageBuffer&& other) noexcept;
  HugePageBuffer& operator=(HugePageBuffer&& other) noexcept;
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;
  ~HugePageBuffer();

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Writes fault from here on, as they would on a read-only mapping.
  void make_read_only();

 private:
  void release();

  uint8_t* data_ = nullptr;  // 2 MiB aligned, inside region_
  size_t size_ = 0;
  void* region_ = nullptr;   // what munmap releases
  size_t region_size_ = 0;
};

// True when the kernel grants transparent huge pages to madvise'd memory.
bool huge_pages_available();
// MemAvailable of /proc/meminfo in bytes; 0 when unknown.
uint64_t mem_available_bytes();

}  // namespace engram
