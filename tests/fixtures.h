// Where tests find the shared fixtures: $SINKSERVE_FIXTURES, else ../shared beside the checkout
// (the same rule as scripts/fixtures). Tests that need a missing fixture fail, naming it.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace sinkserve::test {

inline std::string fixtures_dir() {
  const char* env = std::getenv("SINKSERVE_FIXTURES");
  return env && *env ? env : SINKSERVE_DEFAULT_FIXTURES;
}

// Path of a fixture, e.g. fixture("models/stories260K.gguf"); fails the test when absent.
inline std::string fixture(const std::string& rel) {
  const std::string p = fixtures_dir() + "/" + rel;
  if (!std::filesystem::exists(p))
    ADD_FAILURE() << "fixture " << p << " is missing: run scripts/fetch-fixtures or set SINKSERVE_FIXTURES";
  return p;
}

inline std::string sinkserve_binary() { return SINKSERVE_BINARY; }

}  // namespace sinkserve::test
