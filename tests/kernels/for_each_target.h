// Runs a test body once per Highway target compiled in and supported by this
// CPU, with dynamic dispatch forced onto that target, so every SIMD path of a
// kernel is checked against its reference, not only the best one.
#pragma once

#include <string>
#include <vector>

#include <hwy/highway.h>
#include <hwy/targets.h>

#include <gtest/gtest.h>

namespace engram::kernels {

// Returns the names of the targets run.
template <class Body>
std::vector<std::string> for_each_target(const Body& body) {
  std::vector<std::string> names;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    names.push_back(hwy::TargetName(target));
    SCOPED_TRACE("target " + names.back());
    body();
    hwy::SetSupportedTargetsForTest(0);
  }
  return names;
}

}  // namespace engram::kernels
