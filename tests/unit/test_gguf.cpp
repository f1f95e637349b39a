// GGUF reader, writer, model config and `synth`: real fixtures, round trips against a hand-made
// reference encoding, targeted corruptions with their messages, and a seeded mutation corpus.
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>

#include <gtest/gtest.h>

#include "kernels/type_traits.h"
#include "runtime/gguf.h"
#include "runtime/model_config.h"
#include "tests/fixtures.h"
#include "tests/gguf_bytes.h"

using namespace sinkserve;
using sinkserve::test::GGUFBytes;
namespace fs = std::filesystem;

namespace {

fs::path tmp_dir() {
  static const fs::path d = sinkserve::test::make_temp_dir("test_gguf");
  return d;
}

std::string tmp(const std::string& name) { return (tmp_dir() / name).string(); }

// The error GGUFFile throws for `bytes`, or "" when they load.
std::string load_error(const std::string& bytes, const std::string& name = "case.gguf") {
  const std::string p = tmp(name);
  sinkserve::test::write_bytes(p, bytes);
  try {
    GGUFFile f(p);
    return "";
  } catch (const GGUFError& e) {
    return e.what();
  }
}

#define EXPECT_LOAD_ERROR(bytes, needle)                                              \
  do {                                                                                \
    const std::string err_ = load_error(bytes);                                       \
    EXPECT_NE(err_.find(needle), std::string::npos) << "error was: '" << err_ << "'"; \
    EXPECT_NE(err_.find("case.gguf"), std::string::npos) << err_;                     \
  } while (0)

// The exit status of `sinkserve <args>` (-1: killed by a signal).
int exit_status(const std::string& args) { return sinkserve::test::run_sinkserve(tmp_dir(), args).code; }

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Real files

// Where the data section starts, derived from the file size: writers pad every tensor, the last
// one included, to the alignment.
uint64_t data_start_of(const GGUFFile& f) {
  uint64_t end = 0;
  for (const auto& t : f.tensors()) end = std::max(end, t.offset + t.bytes);
  return f.file_size() - (end + f.alignment() - 1) / f.alignment() * f.alignment();
}

// Every tensor's data pointer must address the bytes at data_start + offset of the file itself.
void expect_data_pointers_match_file(const GGUFFile& f) {
  const std::string bytes = sinkserve::test::read_file(f.path());
  const uint64_t start = data_start_of(f);
  ASSERT_EQ(start % f.alignment(), 0u);
  for (const auto& t : f.tensors())
    ASSERT_EQ(std::memcmp(t.data, bytes.data() + start + t.offset, t.bytes), 0) << t.name;
}

TEST(GGUFRealFiles, Stories260K) {
  GGUFFile f(sinkserve::test::fixture("models/stories260K.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.tensors().size(), 48u);
  for (const auto& t : f.tensors()) EXPECT_EQ(t.type, DType::F32) << t.name;
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f.get_int("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(f.get_array("tokenizer.ggml.tokens").items.size(), 512u);
  EXPECT_EQ(f.get_array("tokenizer.ggml.tokens").elem_type, GGUFType::STRING);

  const auto& embd = f.tensor("token_embd.weight", {64, 512});
  const auto& out = f.tensor("output.weight", {64, 512});
  EXPECT_EQ(embd.bytes, 64u * 512 * 4);
  EXPECT_EQ(std::memcmp(embd.data, out.data, embd.bytes), 0) << "README: output.weight copies token_embd";
  f.tensor("blk.4.ffn_down.weight", {172, 64});
  f.tensor("blk.0.attn_k.weight", {64, 32});
  EXPECT_THROW(f.tensor("blk.0.attn_k.weight", {64, 64}), GGUFError);
  EXPECT_THROW(f.tensor("blk.5.attn_k.weight"), GGUFError);
  expect_data_pointers_match_file(f);

  const ModelConfig c = read_model_config(f);
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.ffn, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab, 512);
  EXPECT_EQ(c.ctx_train, 2048);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope.freq_base, 10000.0f);
  EXPECT_FLOAT_EQ(c.rope.freq_scale, 1.0f);
  EXPECT_FALSE(c.rope.neox);
  EXPECT_FALSE(c.tied_output);
  EXPECT_EQ(c.spec->name, "llama");
}

TEST(GGUFRealFiles, Gutenberg1M) {
  GGUFFile f(sinkserve::test::fixture("models/gutenberg-1m.gguf"));
  const ModelConfig c = read_model_config(f);
  EXPECT_EQ(c.dim, 128);
  EXPECT_EQ(c.n_layers, 6);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.ffn, 344);
  EXPECT_EQ(c.vocab, 512);
  EXPECT_EQ(c.ctx_train, 256);
  EXPECT_TRUE(c.tied_output);
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  int64_t params = 0;
  for (const auto& t : f.tensors()) params += t.elements();
  EXPECT_EQ(params, 1154688);  // README's parameter count
  expect_data_pointers_match_file(f);
}

TEST(GGUFRealFiles, LlamaTinyRandomF16) {
  GGUFFile f(sinkserve::test::fixture("models/llama-2-tiny-random.gguf"));
  const ModelConfig c = read_model_config(f);
  EXPECT_EQ(c.dim, 8);
  EXPECT_EQ(c.n_layers, 1);
  EXPECT_EQ(c.n_heads, 2);
  EXPECT_EQ(c.ffn, 32);
  EXPECT_EQ(c.vocab, 32000);
  EXPECT_FALSE(c.tied_output);
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight", {8, 8}).type, DType::F16);
  EXPECT_EQ(f.tensor("blk.0.ffn_up.weight", {8, 32}).bytes, 8u * 32 * 2);
  EXPECT_EQ(f.tensor("token_embd.weight").ne[1], 32000);
  expect_data_pointers_match_file(f);
}

// ---------------------------------------------------------------------------------------------
// Writer

GGUFValue u(GGUFType t, uint64_t v) { return {t, v}; }
GGUFValue s(GGUFType t, int64_t v) { return {t, v}; }

TEST(GGUFWriter, MatchesHandAssembledBytes) {
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("n", 7);
  const float vals[3] = {1.0f, -2.5f, 3.25f};
  w.add_tensor("t", DType::F32, {3}, vals, sizeof vals);
  w.add_tensor("z", DType::F16, {1, 2}, [](uint8_t* dst, size_t n) { std::memset(dst, 0xab, n); });
  w.write(tmp("w.gguf"));

  GGUFBytes ref = GGUFBytes::header(2, 2);
  ref.kv_string("general.architecture", "llama").kv_u32("n", 7);
  ref.tensor_info("t", {3}, 0, 0).tensor_info("z", {1, 2}, 1, 32).pad(32);
  ref.b.append(reinterpret_cast<const char*>(vals), sizeof vals);
  ref.pad(32);
  ref.b.append(4, char(0xab));
  ref.pad(32);
  EXPECT_EQ(sinkserve::test::read_file(tmp("w.gguf")), ref.b);
  EXPECT_FALSE(fs::exists(tmp("w.gguf.partial")));
}

TEST(GGUFWriter, RoundTripsEveryMetadataTypeAndTensorType) {
  GGUFWriter w;
  w.set("u8", u(GGUFType::UINT8, 255));
  w.set("i8", s(GGUFType::INT8, -128));
  w.set("u16", u(GGUFType::UINT16, 65535));
  w.set("i16", s(GGUFType::INT16, -32768));
  w.set("u32", u(GGUFType::UINT32, 4000000000u));
  w.set("i32", s(GGUFType::INT32, -2000000000));
  w.set("u64", u(GGUFType::UINT64, ~uint64_t(0)));
  w.set("i64", s(GGUFType::INT64, INT64_MIN));
  w.set("f32", {GGUFType::FLOAT32, 0.1});
  w.set("f64", {GGUFType::FLOAT64, 0.1});
  w.set("bool", {GGUFType::BOOL, true});
  w.set("str", {GGUFType::STRING, std::string("h\xc3\xa9llo\0x", 7)});
  w.set("empty_str", {GGUFType::STRING, std::string()});
  GGUFArray strs{GGUFType::STRING, {{GGUFType::STRING, std::string("a")}, {GGUFType::STRING, std::string()}}};
  w.set("arr_str", {GGUFType::ARRAY, strs});
  w.set("arr_empty", {GGUFType::ARRAY, GGUFArray{GGUFType::INT32, {}}});
  GGUFArray inner{GGUFType::INT16, {s(GGUFType::INT16, -3), s(GGUFType::INT16, 4)}};
  GGUFArray nested{GGUFType::ARRAY, {{GGUFType::ARRAY, inner}, {GGUFType::ARRAY, GGUFArray{GGUFType::INT16, {}}}}};
  w.set("arr_nested", {GGUFType::ARRAY, nested});
  w.set("u32", u(GGUFType::UINT32, 17));  // set() replaces, keeping one key

  std::vector<float> src(2 * 64);
  for (size_t i = 0; i < src.size(); ++i) src[i] = std::sin(float(i)) * 3.0f;
  std::vector<std::vector<uint8_t>> stored;
  const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0};
  for (DType t : types) {
    std::vector<uint8_t> buf(size_t(dtype_row_bytes(t, 64) * 2));
    quantize_row(t, src.data(), buf.data(), 128);
    w.add_tensor(std::string("w.") + std::string(dtype_name(t)), t, {64, 2}, buf.data(), buf.size());
    stored.push_back(buf);
  }
  EXPECT_THROW(w.add_tensor("w.F32", DType::F32, {1}, src.data(), 4), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("bad", DType::Q8_0, {33}, src.data(), 34), std::invalid_argument);
  EXPECT_THROW(w.add_tensor("bad", DType::F32, {3}, src.data(), 8), std::invalid_argument);

  for (uint64_t align : {32u, 64u, 1u}) {
    const std::string p = tmp("rt" + std::to_string(align) + ".gguf");
    w.write(p, align);
    GGUFFile f(p);
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), align);
    EXPECT_EQ(std::get<uint64_t>(f.find("u8")->v), 255u);
    EXPECT_EQ(f.get_int("i8"), -128);
    EXPECT_EQ(f.get_int("u16"), 65535);
    EXPECT_EQ(f.get_int("i16"), -32768);
    EXPECT_EQ(f.get_int("u32"), 17);
    EXPECT_EQ(f.get_int("i32"), -2000000000);
    EXPECT_EQ(std::get<uint64_t>(f.find("u64")->v), ~uint64_t(0));
    EXPECT_THROW(f.get_int("u64"), GGUFError);  // does not fit int64
    EXPECT_EQ(f.get_int("i64"), INT64_MIN);
    EXPECT_EQ(f.get_float("f32"), double(0.1f));
    EXPECT_EQ(f.get_float("f64"), 0.1);
    EXPECT_EQ(f.get_float("i8"), -128.0);
    EXPECT_EQ(f.find("bool")->type, GGUFType::BOOL);
    EXPECT_TRUE(std::get<bool>(f.find("bool")->v));
    EXPECT_EQ(f.get_string("str"), std::string("h\xc3\xa9llo\0x", 7));
    EXPECT_EQ(f.get_string("empty_str"), "");
    EXPECT_THROW(f.get_string("u8"), GGUFError);
    EXPECT_THROW(f.get_int("str"), GGUFError);
    EXPECT_THROW(f.get_int("bool"), GGUFError);
    EXPECT_THROW(f.get_int("missing"), GGUFError);
    EXPECT_FALSE(f.find_int("missing"));
    const auto& a = f.get_array("arr_str");
    ASSERT_EQ(a.items.size(), 2u);
    EXPECT_EQ(std::get<std::string>(a.items[0].v), "a");
    EXPECT_EQ(f.get_array("arr_empty").elem_type, GGUFType::INT32);
    EXPECT_TRUE(f.get_array("arr_empty").items.empty());
    const auto& n = f.get_array("arr_nested");
    ASSERT_EQ(n.elem_type, GGUFType::ARRAY);
    ASSERT_EQ(n.items.size(), 2u);
    const auto& in0 = std::get<GGUFArray>(n.items[0].v);
    ASSERT_EQ(in0.items.size(), 2u);
    EXPECT_EQ(in0.elem_type, GGUFType::INT16);
    EXPECT_EQ(std::get<int64_t>(in0.items[0].v), -3);
    EXPECT_TRUE(std::get<GGUFArray>(n.items[1].v).items.empty());

    ASSERT_EQ(f.tensors().size(), 4u);
    for (size_t i = 0; i < 4; ++i) {
      const auto& t = f.tensor(std::string("w.") + std::string(dtype_name(types[i])), {64, 2});
      EXPECT_EQ(t.type, types[i]);
      EXPECT_EQ(t.offset % align, 0u);
      ASSERT_EQ(t.bytes, stored[i].size());
      EXPECT_EQ(std::memcmp(t.data, stored[i].data(), t.bytes), 0);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % align, 0u);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Targeted corruptions: each names its problem

GGUFBytes one_tensor(const std::vector<uint64_t>& ne, uint32_t type, uint64_t offset, size_t data_bytes) {
  GGUFBytes g = GGUFBytes::header(1, 1);
  g.kv_string("general.architecture", "llama").tensor_info("t", ne, type, offset).pad(32);
  g.b.append(data_bytes, '\0');
  return g;
}

TEST(GGUFErrors, HeaderProblems) {
  EXPECT_LOAD_ERROR(std::string(), "empty file");
  EXPECT_LOAD_ERROR(std::string("GG"), "not a GGUF file");
  EXPECT_LOAD_ERROR(std::string("GGML") + std::string(20, '\0'), "magic is 'GGML'");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 0, 1).b, "unsupported GGUF version 1");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 0, 4).b, "unsupported GGUF version 4");
  GGUFBytes be;
  be.b = "GGUF";
  be.b += std::string("\0\0\0\3", 4) + std::string(16, '\0');
  EXPECT_LOAD_ERROR(be.b, "big-endian");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 0).b.substr(0, 20), "truncated file: metadata key count");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1u << 30).b, "metadata keys, more than");
  EXPECT_LOAD_ERROR(GGUFBytes::header(1u << 30, 0).b, "tensors, more than");
  // v2 has the same layout as v3.
  EXPECT_EQ(load_error(GGUFBytes::header(0, 0, 2).kv_u32("a", 1).b), "");
}

TEST(GGUFErrors, MetadataProblems) {
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).u64(1ull << 40).b + std::string(64, 'k'), "claims 1099511627776 bytes");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("k").u32(13).u32(0).b, "unknown value type 13");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("k").u32(8).u64(~0ull).b, "string value of 'k'");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("k").u32(9).u32(4).u64(1ull << 40).u32(1).b,
                    "array 'k' claims 1099511627776 elements");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("k").u32(9).u32(99).u64(0).b, "unknown element type 99");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("k").u32(7).pod<uint8_t>(2).b, "must be 0 or 1");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 2).kv_u32("k", 1).kv_u32("k", 2).b, "duplicate metadata key 'k'");
  // Nested one-element arrays deeper than any real file: refused before the stack suffers.
  GGUFBytes deep = GGUFBytes::header(0, 1);
  deep.str("k").u32(9);
  for (int i = 0; i < 20; ++i) deep.u32(9).u64(1);
  EXPECT_LOAD_ERROR(deep.b, "nests deeper");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("general.alignment").u32(4).u32(24).b, "not a power of two");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("general.alignment").u32(4).u32(0).b, "not a power of two");
  EXPECT_LOAD_ERROR(GGUFBytes::header(0, 1).str("general.alignment").u32(8).str("32").b, "expected uint32");
}

TEST(GGUFErrors, TensorProblems) {
  EXPECT_EQ(load_error(one_tensor({4, 2}, 0, 0, 32).b), "");
  EXPECT_LOAD_ERROR(one_tensor({4, 2}, 0, 0, 31).b, "lies outside");      // data truncated
  EXPECT_LOAD_ERROR(one_tensor({4, 2}, 0, 32, 32).b, "lies outside");     // offset past the end
  EXPECT_LOAD_ERROR(one_tensor({4, 2}, 0, 4, 64).b, "not a multiple of the alignment 32");
  EXPECT_LOAD_ERROR(one_tensor({1, 1, 1, 1, 1}, 0, 0, 32).b, "has 5 dimensions");
  EXPECT_LOAD_ERROR(one_tensor({}, 0, 0, 32).b, "has 0 dimensions");
  EXPECT_LOAD_ERROR(one_tensor({4, 0}, 0, 0, 32).b, "dimension 1 = 0");
  EXPECT_LOAD_ERROR(one_tensor({~0ull}, 0, 0, 32).b, "must be positive");
  EXPECT_LOAD_ERROR(one_tensor({1ull << 32, 1ull << 32}, 0, 0, 32).b, "overflows");
  EXPECT_LOAD_ERROR(one_tensor({33}, 8, 0, 64).b, "not a multiple of the Q8_0 block size 32");
  EXPECT_LOAD_ERROR(one_tensor({256}, 16, 0, 64).b,
                    "tensor 't' has type 16 which sinkserve does not support (F32, F16, BF16, Q8_0, Q4_0, ");
  EXPECT_LOAD_ERROR(one_tensor({256}, 16, 0, 64).b, "it is ggml's IQ2_XXS");
  EXPECT_LOAD_ERROR(one_tensor({32}, 12, 0, 64).b, "not a multiple of the Q4_K block size 256");
  EXPECT_LOAD_ERROR(one_tensor({512}, 12, 0, 256).b, "lies outside");  // two Q4_K blocks need 288 bytes
  EXPECT_LOAD_ERROR(one_tensor({32}, 1000, 0, 64).b, "not a known ggml type");
  EXPECT_LOAD_ERROR(GGUFBytes::header(1, 0).tensor_info("t", {4}, 0, 0).b, "truncated file: the tensor data");

  GGUFBytes overlap = GGUFBytes::header(2, 0);
  overlap.tensor_info("a", {16}, 0, 0).tensor_info("b", {8}, 0, 32).pad(32).b.append(128, '\0');
  EXPECT_LOAD_ERROR(overlap.b, "tensors 'a' and 'b' overlap");
  GGUFBytes dup = GGUFBytes::header(2, 0);
  dup.tensor_info("a", {8}, 0, 0).tensor_info("a", {8}, 0, 32).pad(32).b.append(64, '\0');
  EXPECT_LOAD_ERROR(dup.b, "duplicate tensor name 'a'");
  EXPECT_NE(load_error("x", "dir_missing/none.gguf").find("cannot open"), std::string::npos);
}

TEST(GGUFErrors, NotARegularFile) {
  try {
    GGUFFile f(tmp_dir().string());
    FAIL() << "a directory loaded";
  } catch (const GGUFError& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Mutation corpus: no input may crash the reader or make it throw anything but GGUFError.

struct Outcome {
  int loaded = 0, rejected = 0;
};

// Loads `p` and, when it loads, touches everything a model loader would: all metadata, the first
// and last byte of every tensor, the config. Any exception but GGUFError fails the test.
bool try_load(const std::string& p, Outcome& o, const std::string& what) {
  try {
    GGUFFile f(p);
    uint64_t sum = 0;
    for (const auto& [k, v] : f.metadata()) sum += k.size() + size_t(v.type);
    for (const auto& t : f.tensors()) sum += t.data[0] + t.data[t.bytes - 1];
    try {
      const ModelConfig c = read_model_config(f);
      sum += uint64_t(c.dim);
    } catch (const GGUFError&) {
    }
    // Keeps the reads above from being optimised away, so ASan sees every one.
    volatile uint64_t sink = sum;
    (void)sink;
    ++o.loaded;
    return true;
  } catch (const GGUFError&) {
    ++o.rejected;
    return false;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw a non-GGUFError: " << e.what();
  } catch (...) {
    ADD_FAILURE() << what << ": threw a non-exception";
  }
  return false;
}

void mutation_corpus(const std::string& original, uint64_t data_start, uint64_t data_end, uint64_t seed,
                     int n_mutations) {
  const std::string p = tmp("mutant.gguf");
  Outcome trunc;
  // Truncation at every byte of the header (every field boundary among them) and at a sample of
  // points in the data: anything short of the last tensor's end must be refused.
  std::vector<uint64_t> cuts;
  for (uint64_t n = 0; n <= data_start; ++n) cuts.push_back(n);
  for (uint64_t n = data_start; n < original.size(); n += std::max<uint64_t>(1, (original.size() - data_start) / 64))
    cuts.push_back(n);
  cuts.push_back(data_end - 1);
  for (uint64_t n : cuts) {
    sinkserve::test::write_bytes(p, original.substr(0, n));
    const bool ok = try_load(p, trunc, "truncation at " + std::to_string(n));
    if (n < data_end) {
      EXPECT_FALSE(ok) << "file truncated to " << n << " of " << data_end << " bytes loaded";
    }
  }

  // Mutations patch one copy in place and restore it, so a large file is written once.
  Outcome mut;
  sinkserve::test::write_bytes(p, original);
  const int fd = ::open(p.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  uint64_t s = seed;
  const uint64_t huge[] = {~0ull, 1ull << 63, (1ull << 63) - 1, 1ull << 32, 1ull << 40, 0, 1, 5, 31, 33};
  for (int i = 0; i < n_mutations; ++i) {
    const uint64_t at = splitmix(s) % data_start;
    char patch[8];
    size_t len = 1;
    switch (splitmix(s) % 5) {
      case 0: patch[0] = char(original[at] ^ (1 << (splitmix(s) % 8))); break;  // bit flip
      case 1: patch[0] = char(splitmix(s)); break;                               // random byte
      case 2: {  // a huge or tiny u64, as in lengths, counts, dimensions and offsets
        const uint64_t v = huge[splitmix(s) % std::size(huge)];
        std::memcpy(patch, &v, len = 8);
        break;
      }
      case 3: {  // a small u32, as in type fields and dimension counts
        const uint32_t v = uint32_t(splitmix(s) % 40);
        std::memcpy(patch, &v, len = 4);
        break;
      }
      case 4:  // a run of 0xff
        std::memset(patch, 0xff, len = 1 + splitmix(s) % 8);
        break;
    }
    len = std::min<size_t>(len, original.size() - at);
    ASSERT_EQ(::pwrite(fd, patch, len, off_t(at)), ssize_t(len));
    try_load(p, mut, "mutation " + std::to_string(i) + " at " + std::to_string(at));
    ASSERT_EQ(::pwrite(fd, original.data() + at, len, off_t(at)), ssize_t(len));
  }
  ::close(fd);
  // The corpus is only worth its time if it reaches both outcomes.
  EXPECT_GT(mut.rejected, n_mutations / 10);
  EXPECT_GT(mut.loaded, 0);
  std::printf("truncations: %d refused, %d loaded; mutations: %d refused, %d loaded\n", trunc.rejected,
              trunc.loaded, mut.rejected, mut.loaded);
}

TEST(GGUFMutation, WrittenFile) {
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 1);
  w.set_u32("llama.embedding_length", 32);
  w.set_u32("llama.feed_forward_length", 64);
  w.set_u32("llama.attention.head_count", 4);
  w.set_u32("llama.context_length", 128);
  w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  GGUFArray toks{GGUFType::STRING, {}};
  for (int i = 0; i < 8; ++i) toks.items.push_back({GGUFType::STRING, std::string(size_t(i), 'x')});
  w.set("tokenizer.ggml.tokens", {GGUFType::ARRAY, toks});
  GGUFArray nested{GGUFType::ARRAY, {{GGUFType::ARRAY, GGUFArray{GGUFType::UINT8, {u(GGUFType::UINT8, 1)}}}}};
  w.set("nested", {GGUFType::ARRAY, nested});
  w.set("b", {GGUFType::BOOL, false});
  std::vector<uint8_t> zeros(32 * 8 * 4);
  w.add_tensor("token_embd.weight", DType::F32, {32, 8}, zeros.data(), 32 * 8 * 4);
  w.add_tensor("a", DType::F16, {32, 2}, zeros.data(), 128);
  w.add_tensor("b", DType::BF16, {64}, zeros.data(), 128);
  w.add_tensor("c", DType::Q8_0, {64, 1, 1, 1}, zeros.data(), 68);
  const std::string p = tmp("small.gguf");
  w.write(p);
  uint64_t start, end = 0;
  {
    GGUFFile f(p);
    ASSERT_NO_THROW(read_model_config(f));
    start = data_start_of(f);
    for (const auto& t : f.tensors()) end = std::max(end, start + t.offset + t.bytes);
  }
  mutation_corpus(sinkserve::test::read_file(p), start, end, 42, 6000);
}

// A file of every block-quantized type: its headers get the same scrutiny, and its data sizes
// (blocks of 18 to 210 bytes) decide where truncation must be refused.
TEST(GGUFMutation, QuantizedFile) {
  GGUFWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 1);
  w.set_u32("llama.embedding_length", 256);
  w.set_u32("llama.attention.head_count", 4);
  std::vector<float> src(512);
  for (size_t i = 0; i < src.size(); ++i) src[i] = std::sin(float(i));
  for (const TypeTraits& t : all_type_traits()) {
    if (!dtype_is_quantized(t.type)) continue;
    std::vector<uint8_t> buf(size_t(dtype_row_bytes(t.type, 256) * 2));
    quantize_row(t.type, src.data(), buf.data(), 512);
    w.add_tensor("w." + std::string(t.name), t.type, {256, 2}, buf.data(), buf.size());
  }
  const std::string p = tmp("quantized.gguf");
  w.write(p);
  uint64_t start, end = 0;
  {
    GGUFFile f(p);
    start = data_start_of(f);
    for (const auto& t : f.tensors()) end = std::max(end, start + t.offset + t.bytes);
    EXPECT_EQ(f.tensor("w.Q6_K", {256, 2}).bytes, 420u);
  }
  mutation_corpus(sinkserve::test::read_file(p), start, end, 11, 3000);
}

TEST(GGUFMutation, Stories260K) {
  const std::string p = sinkserve::test::fixture("models/stories260K.gguf");
  uint64_t start, end = 0;
  {
    GGUFFile f(p);
    start = data_start_of(f);
    for (const auto& t : f.tensors()) end = std::max(end, start + t.offset + t.bytes);
  }
  mutation_corpus(sinkserve::test::read_file(p), start, end, 7, 2000);
}

// ---------------------------------------------------------------------------------------------
// Model config

// A llama header with `extra` keys (overriding the defaults of the same name) and no tensors.
std::string config_error(const std::vector<std::pair<std::string, GGUFValue>>& extra, ModelConfig* out = nullptr,
                         const std::string& arch = "llama") {
  GGUFWriter w;
  w.set_string("general.architecture", arch);
  w.set_u32(arch + ".block_count", 2);
  w.set_u32(arch + ".embedding_length", 64);
  w.set_u32(arch + ".feed_forward_length", 128);
  w.set_u32(arch + ".attention.head_count", 8);
  w.set_u32(arch + ".context_length", 512);
  w.set_f32(arch + ".attention.layer_norm_rms_epsilon", 1e-6f);
  GGUFArray toks{GGUFType::STRING, {}};
  for (int i = 0; i < 300; ++i) toks.items.push_back({GGUFType::STRING, std::to_string(i)});
  w.set("tokenizer.ggml.tokens", {GGUFType::ARRAY, toks});
  for (const auto& [k, v] : extra) w.set(k, v);
  const std::string p = tmp("config.gguf");
  w.write(p);
  try {
    GGUFFile f(p);
    const ModelConfig c = read_model_config(f);
    if (out) *out = c;
    return "";
  } catch (const GGUFError& e) {
    return e.what();
  }
}

#define EXPECT_CONFIG_ERROR(extra, needle)                                                  \
  do {                                                                                      \
    const std::string err_ = config_error extra;                                            \
    EXPECT_NE(err_.find(needle), std::string::npos) << "error was: '" << err_ << "'";       \
  } while (0)

TEST(ModelConfig, DefaultsAndDerivedValues) {
  ModelConfig c;
  ASSERT_EQ(config_error({}, &c), "");
  EXPECT_EQ(c.n_kv_heads, 8);  // defaults to head_count
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab, 300);
  EXPECT_FLOAT_EQ(c.rope.freq_base, 10000.0f);
  EXPECT_FLOAT_EQ(c.rope.freq_scale, 1.0f);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-6f);
  EXPECT_TRUE(c.tied_output);

  ASSERT_EQ(config_error({{"llama.rope.scaling.type", {GGUFType::STRING, std::string("linear")}},
                          {"llama.rope.scaling.factor", {GGUFType::FLOAT32, 4.0}},
                          {"llama.rope.freq_base", {GGUFType::FLOAT32, 500000.0}},
                          {"llama.attention.head_count_kv", u(GGUFType::UINT32, 2)},
                          {"llama.rope.dimension_count", u(GGUFType::UINT32, 8)}},
                         &c),
            "");
  EXPECT_FLOAT_EQ(c.rope.freq_scale, 0.25f);
  EXPECT_FLOAT_EQ(c.rope.freq_base, 500000.0f);
  EXPECT_EQ(c.n_kv_heads, 2);

  ASSERT_EQ(config_error({}, &c, "qwen2"), "");
  EXPECT_TRUE(c.rope.neox);
  ASSERT_EQ(config_error({{"mistral.attention.sliding_window", u(GGUFType::UINT32, 4096)}}, &c, "mistral"), "");
  EXPECT_FALSE(c.rope.neox);
  EXPECT_EQ(c.sliding_window, 4096);
}

TEST(ModelConfig, AbsurdValuesAreNamed) {
  EXPECT_CONFIG_ERROR(({}, nullptr, "gpt2"), "architecture 'gpt2' is not supported");
  EXPECT_CONFIG_ERROR(({{"llama.attention.head_count", u(GGUFType::UINT32, 7)}}), "does not divide");
  EXPECT_CONFIG_ERROR(({{"llama.attention.head_count_kv", u(GGUFType::UINT32, 3)}}),
                      "head_count_kv 3 does not divide");
  EXPECT_CONFIG_ERROR(({{"llama.block_count", u(GGUFType::UINT32, 0)}}), "'llama.block_count' is 0");
  EXPECT_CONFIG_ERROR(({{"llama.embedding_length", s(GGUFType::INT32, -64)}}), "is -64");
  EXPECT_CONFIG_ERROR(({{"llama.feed_forward_length", u(GGUFType::UINT64, 1ull << 40)}}), "feed_forward_length");
  EXPECT_CONFIG_ERROR(({{"llama.rope.dimension_count", u(GGUFType::UINT32, 5)}}), "rope.dimension_count is 5");
  EXPECT_CONFIG_ERROR(({{"llama.rope.dimension_count", u(GGUFType::UINT32, 10)}}), "at most the head dimension 8");
  EXPECT_CONFIG_ERROR(({{"llama.rope.scaling.type", {GGUFType::STRING, std::string("yarn")}}}), "'yarn'");
  EXPECT_CONFIG_ERROR(({{"llama.rope.scaling.type", {GGUFType::STRING, std::string("linear")}}}),
                      "'llama.rope.scaling.factor' is missing");
  EXPECT_CONFIG_ERROR(({{"llama.attention.layer_norm_rms_epsilon", {GGUFType::FLOAT32, -1.0}}}),
                      "layer_norm_rms_epsilon");
  EXPECT_CONFIG_ERROR(({{"llama.rope.freq_base", {GGUFType::FLOAT32, std::nan("")}}}), "rope.freq_base");
  EXPECT_CONFIG_ERROR(({{"llama.context_length", u(GGUFType::UINT32, 0)}}), "context_length");
  EXPECT_CONFIG_ERROR(({{"llama.block_count", {GGUFType::STRING, std::string("2")}}}), "expected an integer");
  EXPECT_CONFIG_ERROR(({{"tokenizer.ggml.tokens", {GGUFType::ARRAY, GGUFArray{GGUFType::STRING, {}}}}}),
                      "tokenizer.ggml.tokens (count)");
}

// ---------------------------------------------------------------------------------------------
// synth

TEST(Synth, DeterministicBySeedAndReadsBack) {
  const std::string common = "synth --dim 64 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --vocab 300 --type Q8_0";
  ASSERT_EQ(exit_status(common + " --seed 5 --out " + tmp("s1.gguf")), 0);
  ASSERT_EQ(exit_status(common + " --seed 5 --out " + tmp("s2.gguf")), 0);
  ASSERT_EQ(exit_status(common + " --seed 6 --out " + tmp("s3.gguf")), 0);
  const std::string a = sinkserve::test::read_file(tmp("s1.gguf"));
  EXPECT_EQ(a, sinkserve::test::read_file(tmp("s2.gguf")));
  EXPECT_NE(a, sinkserve::test::read_file(tmp("s3.gguf")));

  GGUFFile f(tmp("s1.gguf"));
  const ModelConfig c = read_model_config(f);
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.ffn, 96);
  EXPECT_EQ(c.vocab, 300);
  EXPECT_FALSE(c.tied_output);
  EXPECT_EQ(f.tensors().size(), 3u + 2 * 9);
  EXPECT_EQ(f.tensor("blk.1.attn_k.weight", {64, 32}).type, DType::Q8_0);
  EXPECT_EQ(f.tensor("blk.1.ffn_norm.weight", {64}).type, DType::F32);
  const auto& items = f.get_array("tokenizer.ggml.tokens").items;
  EXPECT_EQ(std::get<std::string>(items[1].v), "<s>");
  EXPECT_EQ(std::get<std::string>(items[3 + 0x41].v), "<0x41>");

  // Weights: zero mean, standard deviation 1/sqrt(fan_in) = 1/8 within sampling error.
  const auto& q = f.tensor("blk.0.ffn_gate.weight");
  std::vector<float> v(size_t(q.elements()));
  dequantize_row(q.type, q.data, v.data(), q.elements());
  double sum = 0, sq = 0;
  for (float x : v) sum += x, sq += double(x) * x;
  const double mean = sum / double(v.size()), sd = std::sqrt(sq / double(v.size()) - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(sd, 0.125, 0.01);
  // Norm weights scatter around 1 (so that a misplaced norm shows in the output).
  const auto& norm = f.tensor("output_norm.weight");
  double norm_sum = 0;
  for (int i = 0; i < 64; ++i) {
    const float g = reinterpret_cast<const float*>(norm.data)[i];
    EXPECT_GT(g, 0.6f);
    EXPECT_LT(g, 1.4f);
    norm_sum += g;
  }
  EXPECT_NEAR(norm_sum / 64, 1.0, 0.05);
}

TEST(Synth, TokenizerFromAndVariants) {
  ASSERT_EQ(exit_status("synth --dim 32 --layers 1 --heads 2 --ffn 64 --tied --arch qwen2 --type BF16 --out " +
                        tmp("q.gguf") + " --tokenizer-from " +
                        sinkserve::test::fixture("tokenizers/ggml-vocab-llama-spm.gguf")),
            0);
  GGUFFile f(tmp("q.gguf"));
  const ModelConfig c = read_model_config(f);
  EXPECT_EQ(c.arch, "qwen2");
  EXPECT_EQ(c.vocab, 32000);
  EXPECT_TRUE(c.tied_output);
  EXPECT_EQ(f.tensor("token_embd.weight", {32, 32000}).type, DType::BF16);
  f.tensor("blk.0.attn_k.bias", {32});
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");

  EXPECT_EQ(exit_status("synth --dim 48 --heads 4 --type Q8_0 --out " + tmp("x.gguf")), 2);  // 48 % 32
  EXPECT_EQ(exit_status("synth --heads 3 --out " + tmp("x.gguf")), 2);
  EXPECT_EQ(exit_status("synth --vocab 100 --out " + tmp("x.gguf")), 2);
  EXPECT_EQ(exit_status("synth --type Q4_K --out " + tmp("x.gguf")), 2);  // --dim 64 % 256
  EXPECT_EQ(exit_status("synth --type Q9_9 --out " + tmp("x.gguf")), 2);
  EXPECT_FALSE(fs::exists(tmp("x.gguf")));
}
