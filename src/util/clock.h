// Wall-clock time as the OpenAI API and the usage ledger write it.
#pragma once

#include <chrono>
#include <cstdint>

namespace engram {

// Seconds since the Unix epoch ("created" fields, ledger rows, batch deadlines).
inline int64_t unix_now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace engram
