// A small declarative command-line parser: options bind to variables, --help prints them, and any
// malformed argument becomes a UsageError naming the option and the value.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace sinkserve {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ArgParser {
 public:
  ArgParser(std::string command, std::string description);
  using Target = std::variant<std::string*, int*, int64_t*, float*, double*, bool*>;
  // `names` like "-n,--tokens"; bool targets are flags taking no value.
  ArgParser& add(const std::string& names, const std::string& metavar, const std::string& help,
                 Target target, bool required = false);
  ArgParser& epilog(std::string text);
  // Parses argv[1..]; returns false when --help was printed (the caller exits 0). Throws
  // UsageError for unknown options, missing or malformed values and missing required options.
  bool parse(int argc, char** argv);
  bool given(const std::string& name) const;  // whether the option appeared
  std::string help() const;

 private:
  struct Opt {
    std::vector<std::string> names;
    std::string metavar, help;
    Target target;
    bool required, seen = false;
  };
  const Opt* find(const std::string& name) const;
  Opt* find(const std::string& name);
  std::string command_, description_, epilog_;
  std::vector<Opt> opts_;
};

// A list like "1,16,64" given to `opt`; empty for an empty string. Throws UsageError unless every
// item is a positive integer.
std::vector<int64_t> parse_positive_list(const std::string& s, const std::string& opt);

// A size like "2GiB", "512MiB", "64KiB", "1G" (powers of 1000 for G/M/K) or plain bytes, given to
// `opt`; throws UsageError unless it is a positive size.
int64_t parse_size(const std::string& s, const std::string& opt);

// The bytes of the file named by option `opt`; throws UsageError("cannot read <opt> '<path>'").
std::string read_option_file(const std::string& opt, const std::string& path);

}  // namespace sinkserve
