// Data sources: the synthetic task's structure, token files of each dtype,
// and the errors for bad files.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "core/error.h"
#include "train/data.h"
#include "train/loss.h"

namespace memo {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir() {
  auto d = fs::temp_directory_path() / ("memo_test_data_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

template <typename T>
std::string write_tokens(const std::string& name, const std::vector<T>& ids) {
  auto p = temp_dir() / name;
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * sizeof(T)));
  return p.string();
}

TEST(SyntheticTask, EachSequenceUsesItsOwnSmallAlphabet) {
  auto src = train::make_synthetic_source({256, 16, 42}, 128);
  auto b = src->next(4, 128);
  ASSERT_EQ(b.tokens.sizes().vec(), (std::vector<int64_t>{4, 128}));
  std::vector<std::set<int64_t>> alphabets;
  for (int64_t i = 0; i < 4; ++i) {
    std::set<int64_t> seen;
    for (int64_t t = 0; t < 128; ++t) seen.insert(b.tokens[i][t].item<int64_t>());
    EXPECT_LE(seen.size(), 16u);
    alphabets.push_back(seen);
    // Targets are the next tokens.
    EXPECT_TRUE(at::equal(b.targets[i].narrow(0, 0, 127), b.tokens[i].narrow(0, 1, 127)));
  }
  EXPECT_NE(alphabets[0], alphabets[1]);
  EXPECT_NEAR(*src->no_context_loss(), std::log(256.0), 1e-12);
}

TEST(SyntheticTask, SameSeedSameBatches) {
  auto a = train::make_synthetic_source({256, 0, 7}, 64)->next(2, 64);
  auto b = train::make_synthetic_source({256, 0, 7}, 64)->next(2, 64);
  auto c = train::make_synthetic_source({256, 0, 8}, 64)->next(2, 64);
  EXPECT_TRUE(at::equal(a.tokens, b.tokens));
  EXPECT_FALSE(at::equal(a.tokens, c.tokens));
}

TEST(TokenFile, ReadsUint16WindowsWithNextTokenTargets) {
  std::vector<uint16_t> ids(100);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint16_t>(1000 + i);
  auto path = write_tokens("u16.bin", ids);
  auto src = train::make_file_source(path, "uint16", 2000, 10, 1);
  auto b = src->next(3, 10);
  for (int64_t i = 0; i < 3; ++i) {
    auto first = b.tokens[i][0].item<int64_t>();
    for (int64_t t = 0; t < 10; ++t) {
      EXPECT_EQ(b.tokens[i][t].item<int64_t>(), first + t);
      EXPECT_EQ(b.targets[i][t].item<int64_t>(), first + t + 1);
    }
  }
}

TEST(TokenFile, ReadsUint32AndText) {
  auto p32 = write_tokens<uint32_t>("u32.bin", {70000, 70001, 70002, 70003});
  auto b = train::make_file_source(p32, "uint32", 80000, 3, 1)->next(1, 3);
  EXPECT_EQ(b.tokens[0][0].item<int64_t>(), 70000);
  auto ptxt = write_tokens<char>("t.txt", {'a', 'b', 'c', 'd', 'e'});
  auto t = train::make_file_source(ptxt, "auto", 256, 4, 1)->next(1, 4);
  EXPECT_EQ(t.tokens[0][0].item<int64_t>(), 'a');
  EXPECT_EQ(t.targets[0][3].item<int64_t>(), 'e');
}

void expect_input_error(const std::function<void()>& fn, const std::string& fragment) {
  try {
    fn();
    ADD_FAILURE() << "expected InputError containing: " << fragment;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(TokenFile, RejectsBadFiles) {
  expect_input_error([] { train::make_file_source("/nonexistent/x.bin", "uint16", 10, 4, 1); },
                     "not found");
  auto empty = write_tokens<uint16_t>("empty.bin", {});
  expect_input_error([&] { train::make_file_source(empty, "uint16", 10, 4, 1); }, "is empty");
  auto odd = write_tokens<char>("odd.bin", {1, 2, 3});
  expect_input_error([&] { train::make_file_source(odd, "uint16", 10, 1, 1); },
                     "not a whole number");
  auto big = write_tokens<uint16_t>("big.bin", {1, 2, 300, 4, 5, 6});
  expect_input_error([&] { train::make_file_source(big, "uint16", 256, 2, 1); },
                     "token id 300 at position 2");
  auto shrt = write_tokens<uint16_t>("short.bin", {1, 2, 3});
  expect_input_error([&] { train::make_file_source(shrt, "uint16", 256, 8, 1); },
                     "fewer than seq_len + 1");
  expect_input_error([&] { train::make_file_source(shrt, "int8", 256, 1, 1); }, "data dtype");
}

}  // namespace
}  // namespace memo
