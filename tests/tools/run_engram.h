// Runs the built `engram` binary (ENGRAM_BINARY) for the command-line tests:
// stdout and stderr are captured through files in a per-process temp dir.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "test_support.h"

namespace engram::test {

struct CliResult {
  int exit_code = -1;   // 128 + signal when the binary was killed
  std::string out;
  std::string err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// `engram args...`, with stdin from /dev/null.
inline CliResult run_engram(const std::vector<std::string>& args) {
  struct IoDir {  // removed when the test process exits
    std::filesystem::path path = temp_dir("cli-io");
    ~IoDir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const IoDir io;
  std::string cmd = shell_quote(ENGRAM_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  const std::filesystem::path out = io.path / "stdout", err = io.path / "stderr";
  cmd += " >" + shell_quote(out.string()) + " 2>" + shell_quote(err.string()) + " </dev/null";
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  r.out = read_text_file(out);
  r.err = read_text_file(err);
  return r;
}

}  // namespace engram::test
