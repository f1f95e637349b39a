// Where tests find the shared fixtures: $SINKSERVE_FIXTURES, else ../shared beside the checkout
// (the same rule as scripts/fixtures). Tests that need a missing fixture fail, naming it. Also the
// file helpers tests share: a scratch directory, whole-file reads and writes, and running the
// sinkserve executable.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
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

// A fresh directory for one test program's files, removed at exit by the caller's fixture.
inline std::filesystem::path make_temp_dir(const std::string& tag) {
  auto d = std::filesystem::temp_directory_path() / ("sinkserve_" + tag + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// The whole file, byte for byte; fails the test when it cannot be opened.
inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) ADD_FAILURE() << "cannot read " << p.string();
  return std::string(std::istreambuf_iterator<char>(f), {});
}

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// One run of the sinkserve executable.
struct CliResult {
  bool exited = false;  // false: killed by a signal
  int code = -1;        // the exit status; -1 when killed by a signal
  std::string out, err;
};

// Runs `sinkserve <args>` (args as /bin/sh reads them) with stdin_text on its standard input
// (nothing: /dev/null), its output captured through files in dir.
inline CliResult run_sinkserve(const std::filesystem::path& dir, const std::string& args,
                               const std::string* stdin_text = nullptr) {
  const std::filesystem::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  std::string in = "/dev/null";
  if (stdin_text) {
    in = (dir / "stdin.txt").string();
    write_bytes(in, *stdin_text);
  }
  const std::string cmd =
      sinkserve_binary() + " " + args + " <" + in + " >" + out.string() + " 2>" + err.string();
  const int st = std::system(cmd.c_str());
  CliResult r;
  r.exited = WIFEXITED(st);
  r.code = r.exited ? WEXITSTATUS(st) : -1;
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

}  // namespace sinkserve::test
