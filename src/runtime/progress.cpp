#include "runtime/progress.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

namespace engram {

Expected<uint64_t> parse_byte_size(std::string_view text) {
  auto bad = [&](const char* why) {
    return make_error("bad byte size '", std::string(text), "': ", why,
                      " (expected a number with an optional unit, e.g. 2GiB, 512MiB, 4096)");
  };
  std::string_view s = text;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  size_t n = 0;
  while (n < s.size() && (std::isdigit(static_cast<unsigned char>(s[n])) || s[n] == '.')) ++n;
  if (n == 0) return bad("no number");
  double value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + n, value);
  if (ec != std::errc() || end != s.data() + n) return bad("malformed number");

  std::string unit;
  for (char c : s.substr(n)) {
    if (c != ' ') unit += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (!unit.empty() && unit.back() == 'b') unit.pop_back();  // "GiB", "GB", "B"
  double scale = 1;
  if (!unit.empty()) {
    const bool binary = unit.size() == 2 && unit[1] == 'i';
    if (unit.size() > 2 || (unit.size() == 2 && !binary)) return bad("unknown unit");
    const std::string_view prefixes = "kmgt";
    const size_t p = prefixes.find(unit[0]);
    if (p == std::string_view::npos) return bad("unknown unit");
    // Bare K/M/G/T mean the binary units, as memory sizes usually do.
    const bool decimal = !binary && !s.empty() && (s.back() == 'B' || s.back() == 'b') && unit.size() == 1;
    scale = std::pow(decimal ? 1000.0 : 1024.0, static_cast<double>(p + 1));
  }
  const double bytes = value * scale;
  if (!std::isfinite(bytes) || bytes >= 1.8e19) return bad("too large");
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string format_bytes(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.*f %s", v < 10 ? 2 : 1, v, units[u]);
  return buf;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

uint64_t peak_rss_bytes() {
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;  // Linux reports KiB
}

bool stderr_is_tty() { return isatty(STDERR_FILENO) == 1; }

ProgressBar::ProgressBar(std::string label, int64_t total, bool enabled, std::FILE* out)
    : label_(std::move(label)), total_(total), enabled_(enabled && out != nullptr), out_(out),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

std::string ProgressBar::line(int64_t done, uint64_t memory_bytes, double seconds) const {
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
  const double pct = total_ > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
  const std::string eta = done >= total_ ? std::string("0s")
                          : rate > 0    ? format_duration(static_cast<double>(total_ - done) / rate)
                                        : std::string("?");
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s %lld/%lld tokens (%.1f%%) | %.1f tok/s | ETA %s | memory %s | peak RSS %s",
                label_.c_str(), static_cast<long long>(done), static_cast<long long>(total_), pct, rate, eta.c_str(),
                format_bytes(memory_bytes).c_str(), format_bytes(peak_rss_bytes()).c_str());
  return buf;
}

void ProgressBar::draw(int64_t done, uint64_t memory_bytes) {
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string s = line(done, memory_bytes, t);
  // Pad over the tail of a longer previous line.
  const size_t len = s.size();
  if (len < last_len_) s.append(last_len_ - len, ' ');
  last_len_ = len;
  std::fprintf(out_, "\r%s", s.c_str());
  std::fflush(out_);
  drawn_ = true;
  drawn_done_ = done;
}

void ProgressBar::update(int64_t done, uint64_t memory_bytes) {
  last_done_ = done;
  last_bytes_ = memory_bytes;
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(100) && done < total_) return;
  last_draw_ = now;
  draw(done, memory_bytes);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  if (drawn_done_ != last_done_) draw(last_done_, last_bytes_);
  std::fputc('\n', out_);
  std::fflush(out_);
}

}  // namespace engram
