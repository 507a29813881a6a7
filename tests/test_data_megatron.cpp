// Megatron-LM indexed datasets (.bin + .idx, written here by the test):
// documents concatenated in order with their end-of-document tokens, packed
// windows, a position that resumes mid-epoch, selection by the .idx sibling,
// and malformed indexes rejected with InputError.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include "cli_runner.h"
#include "core/error.h"
#include "train/data.h"

namespace memo {
namespace {

namespace fs = std::filesystem;

template <typename T>
void put(std::ofstream& out, T v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof v);
}

// Writes PREFIX.bin/.idx (uint16 tokens) holding `docs`, one sequence each.
std::string write_megatron(const fs::path& prefix, const std::vector<std::vector<uint16_t>>& docs,
                           int64_t pointer_shift = 0, const char* magic = "MMIDIDX\0\0") {
  std::ofstream bin(prefix.string() + ".bin", std::ios::binary);
  std::vector<int32_t> sizes;
  std::vector<int64_t> pointers;
  int64_t offset = 0;
  for (const auto& d : docs) {
    for (auto t : d) put(bin, t);
    sizes.push_back(static_cast<int32_t>(d.size()));
    pointers.push_back(offset + pointer_shift);
    offset += static_cast<int64_t>(d.size()) * 2;
  }
  std::ofstream idx(prefix.string() + ".idx", std::ios::binary);
  idx.write(magic, 9);
  put<uint64_t>(idx, 1);
  put<uint8_t>(idx, 8);  // uint16
  put<uint64_t>(idx, docs.size());
  put<uint64_t>(idx, docs.size() + 1);
  for (auto s : sizes) put(idx, s);
  for (auto p : pointers) put(idx, p);
  for (size_t i = 0; i <= docs.size(); ++i) put<int64_t>(idx, static_cast<int64_t>(i));
  return prefix.string();
}

const std::vector<std::vector<uint16_t>> kDocs = {{5, 6, 7, 8, 0}, {9, 10, 0}, {11, 12, 13, 14, 15, 16, 0}};

TEST(Megatron, DocumentsAreConcatenatedWithTheirEndTokens) {
  auto dir = testing::scratch_dir("mega_concat");
  auto prefix = write_megatron(dir / "d", kDocs);
  auto c = train::open_token_corpus(prefix, "megatron", 100);
  ASSERT_EQ(c->size(), 15);
  std::vector<int64_t> all(15);
  c->read(0, 15, all.data());
  EXPECT_EQ(all, (std::vector<int64_t>{5, 6, 7, 8, 0, 9, 10, 0, 11, 12, 13, 14, 15, 16, 0}));
  std::vector<int64_t> mid(4);
  c->read(3, 4, mid.data());  // across a document boundary
  EXPECT_EQ(mid, (std::vector<int64_t>{8, 0, 9, 10}));
  fs::remove_all(dir);
}

TEST(Megatron, PackedWindowsCoverEveryWindowOncePerEpoch) {
  auto dir = testing::scratch_dir("mega_pack");
  auto prefix = write_megatron(dir / "d", kDocs);
  auto src = train::make_packed_source(train::open_token_corpus(prefix, "megatron", 100), 4, 7);
  std::set<int64_t> firsts;
  for (int i = 0; i < 3; ++i) {  // (15 - 1) / 4 = 3 windows
    auto b = src->next(1, 4);
    EXPECT_TRUE(at::equal(b.tokens.narrow(1, 1, 3), b.targets.narrow(1, 0, 3)));
    firsts.insert(b.tokens[0][0].item<int64_t>());
  }
  EXPECT_EQ(firsts, (std::set<int64_t>{5, 0, 11}));  // windows start at tokens 0, 4, 8
  fs::remove_all(dir);
}

TEST(Megatron, ResumesMidEpochFromItsState) {
  auto dir = testing::scratch_dir("mega_resume");
  auto prefix = write_megatron(dir / "d", kDocs);
  auto make = [&] { return train::make_packed_source(train::open_token_corpus(prefix, "auto", 100), 2, 3); };
  auto a = make();
  a->next(2, 2);
  auto state = a->state();
  auto b = make();
  b->restore(state);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(at::equal(a->next(2, 2).tokens, b->next(2, 2).tokens)) << i;
  fs::remove_all(dir);
}

TEST(Megatron, SelectedByTheIdxSibling) {
  auto dir = testing::scratch_dir("mega_auto");
  auto prefix = write_megatron(dir / "d", kDocs);
  auto src = train::make_file_source(prefix + ".bin", "auto", 100, 4, 1);
  EXPECT_NE(src->describe().find("Megatron"), std::string::npos) << src->describe();
  fs::remove_all(dir);
}

TEST(Megatron, BadMagicIsAnInputError) {
  auto dir = testing::scratch_dir("mega_magic");
  auto prefix = write_megatron(dir / "d", kDocs, 0, "NOTANIDX\0");
  EXPECT_THROW(train::open_token_corpus(prefix, "megatron", 100), InputError);
  fs::remove_all(dir);
}

TEST(Megatron, PointerPastTheBinIsAnInputError) {
  auto dir = testing::scratch_dir("mega_ptr");
  auto prefix = write_megatron(dir / "d", kDocs, 20);
  try {
    train::open_token_corpus(prefix, "megatron", 100);
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("lies outside"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Megatron, IdOverVocabularyIsAnInputErrorWhenOpened) {
  // Every id is checked when the corpus opens, as flat files are, not when a
  // window first reaches it mid-run.
  auto dir = testing::scratch_dir("mega_vocab");
  auto prefix = write_megatron(dir / "d", kDocs);
  try {
    train::open_token_corpus(prefix, "megatron", 10);
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("token id 10 at position 6"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Megatron, AnIdOverTheVocabularyLateInTheCorpusStopsTrainingBeforeTheFirstStep) {
  // 20 documents of 30 tokens; the last token of the last one is beyond the
  // tiny model's 256 ids. Two steps of 2 x 16 tokens never read that far,
  // so before the scan at start-up the run trained and exited 0.
  auto dir = testing::scratch_dir("mega_late");
  std::vector<std::vector<uint16_t>> docs;
  for (int d = 0; d < 20; ++d) docs.push_back(std::vector<uint16_t>(30, static_cast<uint16_t>(d + 1)));
  docs.back().back() = 300;
  auto prefix = write_megatron(dir / "d", docs);
  auto r = testing::run_memo("train --data " + prefix + " --data-dtype megatron --steps 2 --seq-len 16 --batch 2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("token id 300 at position 599"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step 1/"), std::string::npos) << "trained before checking: " << r.output;
  fs::remove_all(dir);
}

TEST(Megatron, TrainsFromTheCommandLine) {
  auto dir = testing::scratch_dir("mega_cli");
  std::vector<std::vector<uint16_t>> docs;
  for (int d = 0; d < 20; ++d) docs.push_back(std::vector<uint16_t>(30, static_cast<uint16_t>(d + 1)));
  auto prefix = write_megatron(dir / "d", docs);
  auto r = testing::run_memo("train --data " + prefix + " --data-dtype megatron --steps 2 --seq-len 16 --batch 2");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("Megatron"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace memo
