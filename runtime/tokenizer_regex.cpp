// The split-pattern engine of the byte-level BPE pre-tokenizers: a pattern is parsed into a tree,
// compiled to a small program of char, class, split and jump instructions (Thompson's form) and
// run by a backtracking matcher over code points. Backtracking because the patterns rely on
// leftmost-first alternation and on lookahead, as the reference engines (Oniguruma, PCRE) do.
// Recording which splits were already tried at a position (State::tried) keeps a split linear in
// the text where plain backtracking turns quadratic (lookahead bodies, a single class in every
// pattern of the table, are not recorded).
#include <stdexcept>

#include "runtime/tokenizer_internal.h"

namespace sinkserve::tok {

namespace {

constexpr size_t kNoMatch = std::string_view::npos;
// A bound on {n,m} that keeps the unrolled program small; the patterns use at most {1,3}.
constexpr int kMaxRepeat = 64;

struct Node {
  enum Kind { kEmpty, kChar, kSet, kAlt, kSeq, kRepeat, kLookahead, kEnd };
  explicit Node(Kind k) : kind(k) {}
  Kind kind;
  uint32_t value = 0;    // kChar: code point; kSet: index of the set
  int min = 0, max = 0;  // kRepeat; max -1: unbounded
  bool negate = false;   // kLookahead
  std::vector<Node> kids;
};

bool can_be_empty(const Node& n) {
  switch (n.kind) {
    case Node::kChar:
    case Node::kSet:
      return false;
    case Node::kSeq:
      for (const Node& k : n.kids)
        if (!can_be_empty(k)) return false;
      return true;
    case Node::kAlt:
      for (const Node& k : n.kids)
        if (can_be_empty(k)) return true;
      return false;
    case Node::kRepeat:
      return n.min == 0 || can_be_empty(n.kids[0]);
    default:  // empty, lookahead and $ consume nothing
      return true;
  }
}

}  // namespace

// Recursive descent over the pattern's code points, then code generation from the tree.
class PatternCompiler {
 public:
  PatternCompiler(std::string_view src, SplitPattern& out) : src_(src), out_(out) {
    for (size_t i = 0; i < src.size();) {
      uint32_t cp;
      const size_t n = utf8_next(src, i, &cp);
      if (cp == kInvalidCodepoint) fail("malformed UTF-8");
      cps_.push_back(cp);
      i += n;
    }
  }

  void compile() {
    const Node root = alternation();
    if (pos_ < cps_.size()) fail("unbalanced ')'");
    if (can_be_empty(root)) fail("the pattern can match empty text");
    emit(root);
    out_.prog_.push_back({SplitPattern::Op::kMatch});
  }

 private:
  using Op = SplitPattern::Op;

  [[noreturn]] void fail(const std::string& why) const {
    throw std::invalid_argument("split pattern '" + std::string(src_) + "': " + why + " at code point " +
                                std::to_string(pos_));
  }
  bool at_end() const { return pos_ >= cps_.size(); }
  uint32_t peek(size_t ahead = 0) const { return pos_ + ahead < cps_.size() ? cps_[pos_ + ahead] : 0; }
  bool eat(uint32_t c) {
    if (at_end() || cps_[pos_] != c) return false;
    ++pos_;
    return true;
  }

  Node alternation() {
    Node first = sequence();
    if (at_end() || peek() != '|') return first;
    Node alt{Node::kAlt};
    alt.kids.push_back(std::move(first));
    while (eat('|')) alt.kids.push_back(sequence());
    return alt;
  }

  Node sequence() {
    Node seq{Node::kSeq};
    while (!at_end() && peek() != '|' && peek() != ')') seq.kids.push_back(repeat());
    return seq;
  }

  Node repeat() {
    Node atom_node = atom();
    int min, max;
    if (eat('?')) {
      min = 0, max = 1;
    } else if (eat('*')) {
      min = 0, max = -1;
    } else if (eat('+')) {
      min = 1, max = -1;
    } else if (peek() == '{') {
      ++pos_;
      min = number();
      max = min;
      if (eat(',')) max = peek() == '}' ? -1 : number();
      if (!eat('}')) fail("expected '}'");
      if (max >= 0 && max < min) fail("{n,m} with m < n");
    } else {
      return atom_node;
    }
    // Lazy (x*?) and possessive (x*+) forms change what matches; refuse rather than misread them.
    if (!at_end() && (peek() == '?' || peek() == '+' || peek() == '*' || peek() == '{'))
      fail("lazy, possessive and stacked quantifiers are not supported");
    if (max != 1 && can_be_empty(atom_node)) fail("a repeated sub-pattern can match empty text");
    if (atom_node.kind == Node::kLookahead || atom_node.kind == Node::kEnd) fail("nothing to repeat");
    Node r{Node::kRepeat};
    r.min = min;
    r.max = max;
    r.kids.push_back(std::move(atom_node));
    return r;
  }

  int number() {
    int v = 0, digits = 0;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      v = v * 10 + int(peek() - '0');
      ++pos_;
      if (++digits > 3 || v > kMaxRepeat) fail("repeat count above " + std::to_string(kMaxRepeat));
    }
    if (digits == 0) fail("expected a repeat count");
    return v;
  }

  Node atom() {
    const uint32_t c = peek();
    ++pos_;
    switch (c) {
      case '(': {
        Node group{Node::kSeq};
        bool icase = false;
        if (eat('?')) {
          if (eat('=') || eat('!')) {
            group.kind = Node::kLookahead;
            group.negate = cps_[pos_ - 1] == '!';
          } else if (peek() == 'i' && peek(1) == ':') {
            pos_ += 2;
            icase = true;
          } else if (!eat(':')) {
            fail("only (?:...), (?i:...), (?=...) and (?!...) groups are supported");
          }
        }
        icase_ += icase;
        group.kids.push_back(alternation());
        icase_ -= icase;
        if (!eat(')')) fail("missing ')'");
        return group;
      }
      case '[':
        if (icase_) fail("character classes inside (?i:...) are not supported");
        return set_node(char_class());
      case '\\':
        return escape_outside_class();
      case '$':
        return Node{Node::kEnd};
      case '.':
      case '^':
        fail(std::string("'") + char(c) + "' is not supported");
      case '*':
      case '+':
      case '?':
      case '{':
        fail("nothing to repeat");
      default:
        return char_node(c);
    }
  }

  // A literal; inside (?i:...) an ASCII letter matches either case (Llama-3's (?i:'s|'t|...)).
  Node char_node(uint32_t c) {
    const uint32_t lower = c | 0x20;
    if (icase_ && lower >= 'a' && lower <= 'z') {
      SplitPattern::Set s;
      s.ranges = {{lower & ~0x20u, lower & ~0x20u}, {lower, lower}};
      return set_node(std::move(s));
    }
    if (icase_ && c >= 0x80) fail("case-insensitive matching of non-ASCII characters is not supported");
    Node n{Node::kChar};
    n.value = c;
    return n;
  }

  Node set_node(SplitPattern::Set s) {
    Node n{Node::kSet};
    n.value = uint32_t(out_.sets_.size());
    out_.sets_.push_back(std::move(s));
    return n;
  }

  // \p{L}, \p{N}, \p{P} (\P: negated) after the 'p' or 'P'; returns the property bit.
  uint8_t property() {
    if (!eat('{')) fail("expected '{' after \\p");
    const uint32_t name = peek();
    ++pos_;
    if (!eat('}')) fail("only the one-letter categories \\p{L}, \\p{N} and \\p{P} are supported");
    switch (name) {
      case 'L': return kPropLetter;
      case 'N': return kPropNumber;
      case 'P': return kPropPunct;
      default: fail("unsupported Unicode category");
    }
  }

  // Escapes that stand for one code point; false when the escape is not one of them.
  bool escaped_char(uint32_t e, uint32_t* cp) {
    switch (e) {
      case 'r': *cp = '\r'; return true;
      case 'n': *cp = '\n'; return true;
      case 't': *cp = '\t'; return true;
      case 'f': *cp = '\f'; return true;
      case 'v': *cp = '\v'; return true;
      case 'x': {
        if (!eat('{')) fail("expected \\x{HHHH}");
        uint32_t v = 0;
        int digits = 0;
        for (; !at_end() && peek() != '}'; ++pos_, ++digits) {
          const uint32_t h = peek();
          const int d = h >= '0' && h <= '9' ? int(h - '0')
                        : h >= 'a' && h <= 'f' ? int(h - 'a' + 10)
                        : h >= 'A' && h <= 'F' ? int(h - 'A' + 10)
                                               : -1;
          if (d < 0 || digits == 6) fail("bad \\x{HHHH} escape");
          v = v * 16 + uint32_t(d);
        }
        if (!eat('}') || digits == 0 || v > 0x10FFFF) fail("bad \\x{HHHH} escape");
        *cp = v;
        return true;
      }
      default:
        // Escaped ASCII punctuation is itself (\$ \+ \| \- \\ \[ ...); letters and digits are
        // escapes with meanings this engine does not have.
        if (e < 128 && e > ' ' && !((e | 0x20) >= 'a' && (e | 0x20) <= 'z') && !(e >= '0' && e <= '9')) {
          *cp = e;
          return true;
        }
        return false;
    }
  }

  Node escape_outside_class() {
    if (at_end()) fail("trailing '\\'");
    const uint32_t e = peek();
    ++pos_;
    SplitPattern::Set s;
    if (e == 's') s.props = kPropSpace;
    else if (e == 'S') s.not_props = kPropSpace;
    else if (e == 'p') s.props = property();
    else if (e == 'P') s.not_props = property();
    else if (uint32_t cp; escaped_char(e, &cp)) return char_node(cp);
    else fail("unsupported escape");
    return set_node(std::move(s));
  }

  // After '[': items up to the closing ']'.
  SplitPattern::Set char_class() {
    SplitPattern::Set s;
    s.negate = eat('^');
    bool empty = true;
    while (!eat(']')) {
      if (at_end()) fail("missing ']'");
      uint32_t lo;
      if (!class_char(s, &lo)) {
        empty = false;
        continue;  // a property escape, which cannot start a range
      }
      uint32_t hi = lo;
      if (peek() == '-' && peek(1) != ']' && pos_ + 1 < cps_.size()) {
        ++pos_;
        if (!class_char(s, &hi)) fail("a range cannot end in a class escape");
        if (hi < lo) fail("range out of order");
      }
      s.ranges.emplace_back(lo, hi);
      empty = false;
    }
    if (empty) fail("empty class");
    std::sort(s.ranges.begin(), s.ranges.end());
    return s;
  }

  // One item of a class: a code point (returns true, *cp set) or a property escape folded into
  // `s` (returns false).
  bool class_char(SplitPattern::Set& s, uint32_t* cp) {
    const uint32_t c = peek();
    ++pos_;
    if (c != '\\') {
      *cp = c;
      return true;
    }
    if (at_end()) fail("trailing '\\'");
    const uint32_t e = peek();
    ++pos_;
    switch (e) {
      case 's': s.props |= kPropSpace; return false;
      case 'S': s.not_props |= kPropSpace; return false;
      case 'p': s.props |= property(); return false;
      case 'P': s.not_props |= property(); return false;
      default:
        if (!escaped_char(e, cp)) fail("unsupported escape");
        return true;
    }
  }

  int32_t here() const { return int32_t(out_.prog_.size()); }
  int32_t push(SplitPattern::Inst in) {
    out_.prog_.push_back(in);
    return here() - 1;
  }

  void emit(const Node& n) {
    auto& prog = out_.prog_;
    switch (n.kind) {
      case Node::kEmpty:
        break;
      case Node::kChar:
        push({Op::kChar, false, n.value});
        break;
      case Node::kSet:
        push({Op::kSet, false, n.value});
        break;
      case Node::kSeq:
        for (const Node& k : n.kids) emit(k);
        break;
      case Node::kAlt: {
        std::vector<int32_t> jumps;
        for (size_t i = 0; i + 1 < n.kids.size(); ++i) {
          const int32_t split = push({Op::kSplit});
          prog[split].x = here();
          emit(n.kids[i]);
          jumps.push_back(push({Op::kJump}));
          prog[split].y = here();
        }
        emit(n.kids.back());
        for (int32_t j : jumps) prog[j].x = here();
        break;
      }
      case Node::kRepeat: {
        for (int i = 0; i < n.min; ++i) emit(n.kids[0]);
        if (n.max < 0) {
          const int32_t loop = push({Op::kSplit});
          prog[loop].x = here();
          emit(n.kids[0]);
          push({Op::kJump, false, 0, loop});
          prog[loop].y = here();
        } else {
          // x{0,k} as nested optionals: skipping one skips all that follow.
          std::vector<int32_t> splits;
          for (int i = n.min; i < n.max; ++i) {
            splits.push_back(push({Op::kSplit}));
            prog[splits.back()].x = here();
            emit(n.kids[0]);
          }
          for (int32_t s : splits) prog[s].y = here();
        }
        break;
      }
      case Node::kLookahead: {
        const int32_t look = push({Op::kLookahead, n.negate});
        emit(n.kids[0]);
        push({Op::kMatch});
        prog[look].y = here();
        break;
      }
      case Node::kEnd:
        push({Op::kEnd});
        break;
    }
  }

  std::string_view src_;
  SplitPattern& out_;
  std::vector<uint32_t> cps_;
  int icase_ = 0;  // depth of (?i:...) groups around the current position
  size_t pos_ = 0;
};

SplitPattern::SplitPattern(std::string_view pattern) { PatternCompiler(pattern, *this).compile(); }

bool SplitPattern::Set::contains(uint32_t cp, uint8_t cp_props) const {
  bool hit = (props & cp_props) != 0 || (not_props & ~cp_props) != 0;
  for (auto it = ranges.begin(); !hit && it != ranges.end() && it->first <= cp; ++it) hit = cp <= it->second;
  return hit != negate;
}

size_t SplitPattern::match(const CodepointText& t, int32_t pc0, size_t pos0, size_t end, State& state,
                           bool remember) const {
  auto& stack = state.stack;
  const size_t base = stack.size();
  stack.emplace_back(pc0, pos0);
  while (stack.size() > base) {
    auto [pc, pos] = stack.back();
    stack.pop_back();
    for (bool alive = true; alive;) {
      const Inst& in = prog_[size_t(pc)];
      switch (in.op) {
        case Op::kChar:
          alive = pos < end && t.cps[pos] == in.arg;
          ++pos, ++pc;
          break;
        case Op::kSet:
          alive = pos < end && sets_[in.arg].contains(t.cps[pos], t.props[pos]);
          ++pos, ++pc;
          break;
        case Op::kSplit:
          if (remember) {
            const size_t word = (pos - state.base) * state.words + size_t(pc) / 64;
            const uint64_t bit = uint64_t(1) << (pc % 64);
            if (word >= state.tried.size()) state.tried.resize(std::max(word + 1, 2 * state.tried.size()));
            state.used = std::max(state.used, word + 1);
            alive = (state.tried[word] & bit) == 0;
            state.tried[word] |= bit;
            if (!alive) break;
          }
          stack.emplace_back(in.y, pos);
          pc = in.x;
          break;
        case Op::kJump:
          pc = in.x;
          break;
        case Op::kLookahead:
          alive = (match(t, pc + 1, pos, end, state, false) != kNoMatch) != in.negate;
          pc = in.y;
          break;
        case Op::kEnd:
          alive = pos == end;
          ++pc;
          break;
        case Op::kMatch:
          stack.resize(base);
          return pos;
      }
    }
  }
  return kNoMatch;
}

void SplitPattern::forget(State& state, size_t base) const {
  std::fill(state.tried.begin(), state.tried.begin() + ptrdiff_t(state.used), 0);
  state.used = 0;
  state.base = base;
  state.words = (prog_.size() + 63) / 64;
}

void SplitPattern::split(const CodepointText& t, Span in, std::vector<Span>& out, State& state) const {
  forget(state, in.begin);
  size_t gap = in.begin;
  for (size_t s = in.begin; s < in.end;) {
    const size_t e = match(t, 0, s, in.end, state, true);
    if (e == kNoMatch) {
      ++s;  // what failed from here fails from any later start too: keep the record
      continue;
    }
    if (s > gap) out.push_back({gap, s});
    out.push_back({s, e});
    s = gap = e;
    // The matching path was recorded as tried although it succeeded.
    forget(state, e);
  }
  if (gap < in.end) out.push_back({gap, in.end});
}

void CodepointText::assign(std::string_view text) {
  cps.clear();
  props.clear();
  offsets.clear();
  for (size_t i = 0; i < text.size();) {
    uint32_t cp;
    const size_t n = utf8_next(text, i, &cp);
    uint8_t p = 0;
    if (cp != kInvalidCodepoint) {
      switch (char_class(cp)) {
        case CharClass::kLetter: p = kPropLetter; break;
        case CharClass::kNumber: p = kPropNumber; break;
        case CharClass::kPunct: p = kPropPunct; break;
        case CharClass::kOther: break;
      }
      if (is_whitespace(cp)) p |= kPropSpace;
    }
    cps.push_back(cp);
    props.push_back(p);
    offsets.push_back(i);
    i += n;
  }
  offsets.push_back(text.size());
}

}  // namespace sinkserve::tok
