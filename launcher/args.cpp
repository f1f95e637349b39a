#include "launcher/args.h"

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

namespace sinkserve {

ArgParser::ArgParser(std::string command, std::string description)
    : command_(std::move(command)), description_(std::move(description)) {}

ArgParser& ArgParser::add(const std::string& names, const std::string& metavar,
                          const std::string& help, Target target, bool required) {
  Opt o{{}, metavar, help, target, required};
  std::stringstream ss(names);
  for (std::string n; std::getline(ss, n, ',');) o.names.push_back(n);
  opts_.push_back(std::move(o));
  return *this;
}

ArgParser& ArgParser::epilog(std::string text) {
  epilog_ = std::move(text);
  return *this;
}

const ArgParser::Opt* ArgParser::find(const std::string& name) const {
  for (const Opt& o : opts_)
    for (const std::string& n : o.names)
      if (n == name) return &o;
  return nullptr;
}

ArgParser::Opt* ArgParser::find(const std::string& name) {
  return const_cast<Opt*>(std::as_const(*this).find(name));
}

bool ArgParser::given(const std::string& name) const {
  const Opt* o = find(name);
  return o && o->seen;
}

namespace {

template <class T>
T parse_number(const std::string& opt, const std::string& v, const char* what) {
  T out{};
  const char* end = v.data() + v.size();
  auto [p, ec] = std::from_chars(v.data(), end, out);
  if (ec != std::errc() || p != end || v.empty())
    throw UsageError(opt + " expects " + what + ", got '" + v + "'");
  return out;
}

}  // namespace

bool ArgParser::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    std::string value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0) {
      if (auto eq = a.find('='); eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_inline = true;
      }
    }
    Opt* o = find(a);
    if (!o) throw UsageError("unknown argument '" + a + "' (see: sinkserve " + command_ + " --help)");
    o->seen = true;
    if (auto* b = std::get_if<bool*>(&o->target)) {
      if (has_inline) throw UsageError(a + " takes no value");
      **b = true;
      continue;
    }
    if (!has_inline) {
      if (i + 1 >= argc) throw UsageError(a + " needs a value (" + o->metavar + ")");
      value = argv[++i];
    }
    std::visit(
        [&](auto* t) {
          using T = std::remove_pointer_t<decltype(t)>;
          if constexpr (std::is_same_v<T, std::string>) *t = value;
          else if constexpr (std::is_same_v<T, int>) *t = parse_number<int>(a, value, "an integer");
          else if constexpr (std::is_same_v<T, int64_t>) *t = parse_number<int64_t>(a, value, "an integer");
          else if constexpr (std::is_same_v<T, float>) *t = parse_number<float>(a, value, "a number");
          else if constexpr (std::is_same_v<T, double>) *t = parse_number<double>(a, value, "a number");
        },
        o->target);
  }
  for (const Opt& o : opts_)
    if (o.required && !o.seen) throw UsageError("missing required option " + o.names.back());
  return true;
}

std::string ArgParser::help() const {
  std::string s = "usage: sinkserve " + command_ + " [options]\n\n" + description_ + "\n\noptions:\n";
  for (const Opt& o : opts_) {
    std::string left = "  ";
    for (size_t i = 0; i < o.names.size(); ++i) left += (i ? ", " : "") + o.names[i];
    if (!o.metavar.empty()) left += " " + o.metavar;
    if (left.size() < 28) left.resize(28, ' ');
    else left += "\n" + std::string(28, ' ');
    s += left + o.help + (o.required ? " (required)" : "") + "\n";
  }
  s += "  -h, --help                  this help\n";
  if (!epilog_.empty()) s += "\n" + epilog_ + "\n";
  return s;
}

std::vector<int64_t> parse_positive_list(const std::string& s, const std::string& opt) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 1) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      throw UsageError(opt + " expects positive integers separated by commas, got '" + s + "'");
    }
  }
  return out;
}

std::string read_option_file(const std::string& opt, const std::string& path) {
  std::error_code ec;
  // A directory opens as a stream that reads nothing: it would pass for an empty file.
  if (std::filesystem::is_directory(path, ec))
    throw UsageError("cannot read " + opt + " '" + path + "': it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read " + opt + " '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw UsageError("cannot read " + opt + " '" + path + "': read error");
  return ss.str();
}

}  // namespace sinkserve

namespace sinkserve {

int64_t parse_size(const std::string& s, const std::string& opt) {
  size_t end = 0;
  double v = 0;
  try {
    v = std::stod(s, &end);
  } catch (const std::exception&) {
    end = 0;
  }
  const std::string unit = s.substr(end);
  double mult = 0;
  for (const auto& [name, m] : {std::pair<const char*, double>{"", 1}, {"B", 1}, {"KiB", 1024.0},
                                {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
                                {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}})
    if (unit == name) mult = m;
  if (end == 0 || mult == 0 || !(v > 0) || v * mult > 9e18)
    throw UsageError(opt + " must be a size like 2GiB, 512MiB or a number of bytes, got '" + s + "'");
  return int64_t(v * mult);
}

}  // namespace sinkserve
