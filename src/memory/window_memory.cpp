// The StreamingLLM baseline: attention sinks plus a sliding window.
//
// It is Engram memory without the blocks (see engram_memory.h, window mode):
// the first options.sinks positions are kept, and a query at position p
// attends them plus positions (p - window, p]. Positions that leave every
// query's window are dropped a block_size at a time, so RAM stays bounded by
// sinks + window + block_size + one chunk, whatever the sequence length.
#include "memory/engram_memory.h"

namespace engram {

std::unique_ptr<Memory> make_window_memory(const MemoryLayout& layout, const EngramMemoryOptions& options) {
  return std::make_unique<EngramMemory>(layout, options, EngramMemory::Mode::WINDOW);
}

}  // namespace engram
