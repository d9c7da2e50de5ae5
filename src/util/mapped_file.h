// A read-only view of a whole file: a memory mapping, or a copy in anonymous
// memory backed by transparent huge pages.
//
// Mapping keeps weights in the page cache, shared between processes, as in
// llama.cpp. The copy exists for speed: generation streams every weight once
// per token, and with 4 KiB file pages a 1 GiB model needs 262144 TLB entries
// per token. With 2 MiB pages, 1B Q8_0 generation ran 15-25% faster on the
// 2-core EPYC VM (docs/benchmarks.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "util/huge_pages.h"
#include "util/status.h"

namespace engram {

enum class LoadMode {
  kAuto,  // kCopy for large files that fit comfortably in RAM when huge pages exist, else kMap
  kMap,   // mmap the file
  kCopy,  // read the file into anonymous memory advised as huge pages
};

// "auto", "mmap", "copy" -> LoadMode; the error names the text.
Expected<LoadMode> parse_load_mode(const std::string& text);
const char* load_mode_name(LoadMode mode);

// What kAuto picks for a file of `file_bytes`, given the MemAvailable of
// /proc/meminfo and whether transparent huge pages can be had by madvise:
// kCopy from 256 MiB up to half of the available memory.
LoadMode resolve_auto_load(uint64_t file_bytes, uint64_t mem_available_bytes, bool huge_pages_available);

class MappedFile {
 public:
  static Expected<MappedFile> open(const std::string& path, LoadMode mode = LoadMode::kMap);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }
  // kMap or kCopy: how the bytes were brought in (never kAuto).
  LoadMode mode() const { return mode_; }

 private:
  void release();

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  HugePageBuffer copy_;  // kCopy: owns the bytes; kMap: empty, and data_ is the mapping
  LoadMode mode_ = LoadMode::kMap;
  std::string path_;
};

}  // namespace engram
