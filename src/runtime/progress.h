// Progress reporting for long prefills, and the size/time formats it uses.
//
// A 1M-token prompt takes minutes; ProgressBar keeps one stderr line updated
// (with '\r') with tokens done/total, tokens/s, ETA, the attention memory's
// bytes and the process's peak RSS.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "util/status.h"

namespace engram {

// "2GiB", "512MiB", "64KiB", "1.5G" (K/M/G/T and KiB/MiB/GiB/TiB are powers of
// 1024, KB/MB/GB/TB powers of 1000), "4096" or "4096B" (bytes). Case of the
// unit is ignored. Error naming the text for anything else.
Expected<uint64_t> parse_byte_size(std::string_view text);

// "1.50 GiB", "512.0 MiB", "900 B".
std::string format_bytes(uint64_t bytes);
// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

// Peak resident set size of this process so far (getrusage), in bytes.
uint64_t peak_rss_bytes();

// True when stderr is a terminal (then progress is shown by default).
bool stderr_is_tty();

class ProgressBar {
 public:
  // Prints nothing unless `enabled`. `label` starts the line ("prefill").
  ProgressBar(std::string label, int64_t total, bool enabled, std::FILE* out = stderr);
  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Tokens done so far and the memory's bytes now; redraws at most ~10 times a second.
  void update(int64_t done, uint64_t memory_bytes);
  // Draws the final state and ends the line (once).
  void finish();

  // The line update() would draw (for tests).
  std::string line(int64_t done, uint64_t memory_bytes, double seconds) const;

 private:
  void draw(int64_t done, uint64_t memory_bytes);

  std::string label_;
  int64_t total_;
  bool enabled_;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t last_done_ = 0;
  int64_t drawn_done_ = -1;  // `done` of the last line drawn
  uint64_t last_bytes_ = 0;
  bool drawn_ = false, finished_ = false;
  size_t last_len_ = 0;
};

}  // namespace engram
