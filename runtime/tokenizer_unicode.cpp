#include <algorithm>

#include "runtime/tokenizer_internal.h"

namespace sinkserve::tok {

namespace {

struct CharRange {
  uint32_t first, last;
  CharClass cls;
};

constexpr CharRange kRanges[] = {
#include "runtime/tokenizer_unicode_ranges.inc"
};

// ASCII is by far the most common input: a direct table avoids the binary search for it.
constexpr std::array<CharClass, 128> make_ascii_table() {
  std::array<CharClass, 128> t{};
  for (const CharRange& r : kRanges)
    for (uint32_t c = r.first; c <= r.last && c < 128; ++c) t[c] = r.cls;
  return t;
}
constexpr std::array<CharClass, 128> kAscii = make_ascii_table();

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 128) return kAscii[cp];
  auto it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                             [](uint32_t c, const CharRange& r) { return c < r.first; });
  if (it == std::begin(kRanges)) return CharClass::kOther;
  --it;
  return cp <= it->last ? it->cls : CharClass::kOther;
}

bool is_whitespace(uint32_t cp) {
  if (cp < 128) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

namespace {

// Length of a well-formed sequence from its lead byte, and the range its second byte must lie
// in (which excludes overlong forms, surrogates and codepoints past U+10FFFF); 0 = invalid lead.
struct Lead {
  uint8_t len, lo, hi;
};
constexpr Lead lead_info(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Shared decoder: returns the length, or 0 when the sequence is valid so far but cut off.
size_t decode(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = uint8_t(s[i]);
  const Lead l = lead_info(b0);
  if (l.len == 1) {
    *cp = b0;
    return 1;
  }
  *cp = kInvalidCodepoint;
  if (l.len == 0) return 1;
  uint32_t c = b0 & (0x7F >> l.len);
  for (size_t k = 1; k < l.len; ++k) {
    if (i + k >= s.size()) return 0;
    const auto b = uint8_t(s[i + k]);
    const bool ok = k == 1 ? (b >= l.lo && b <= l.hi) : (b & 0xC0) == 0x80;
    if (!ok) return k;
    c = (c << 6) | (b & 0x3F);
  }
  *cp = c;
  return l.len;
}

}  // namespace

size_t utf8_next(std::string_view s, size_t i, uint32_t* cp) {
  const size_t n = decode(s, i, cp);
  if (n != 0) return n;
  // Cut off by the end of the input: the bytes present form the maximal subpart.
  *cp = kInvalidCodepoint;
  return s.size() - i;
}

size_t utf8_next_or_incomplete(std::string_view s, size_t i, uint32_t* cp) { return decode(s, i, cp); }

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace sinkserve::tok
