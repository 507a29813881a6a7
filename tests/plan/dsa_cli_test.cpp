// `memo dsa` end to end: malformed CSVs exit with code 2 and name the line;
// a good instance prints the status and writes a packing that validates.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "plan/dsa_problem.h"
#include "plan/dsa_validate.h"

namespace memo::plan {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int exit_code;
  std::string output;  // stdout and stderr
};

CliRun run_memo(const std::string& args) {
  std::string command = std::string(MEMO_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  std::string output;
  std::array<char, 4096> chunk;
  while (size_t n = std::fread(chunk.data(), 1, chunk.size(), pipe)) output.append(chunk.data(), n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

class DsaCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(MEMO_BINARY)) GTEST_SKIP() << "memo binary not built: " << MEMO_BINARY;
    std::string pattern = (fs::temp_directory_path() / "memo-dsa-cli-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  std::string write(const std::string& name, const std::string& text) {
    fs::path path = fs::path(dir_) / name;
    std::ofstream(path) << text;
    return path.string();
  }
  // `memo dsa` on a file `name` holding `text` exits with 2 and says `fragment`.
  void expect_input_error(const std::string& name, const std::string& text,
                          const std::string& fragment) {
    CliRun run = run_memo("dsa " + write(name, text));
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_NE(run.output.find(fragment), std::string::npos) << run.output;
  }
  std::string dir_;
};

TEST_F(DsaCli, NonNumericFieldExitsTwoNamingTheLine) {
  expect_input_error("bad.csv", "id,lower,upper,size\nb1,0,3,4\nb2,0,oops,4\n", "bad.csv:3:");
}

TEST_F(DsaCli, MissingColumnExitsTwoNamingTheLine) {
  expect_input_error("nosize.csv", "id,lower,upper\nb1,0,3\n", "nosize.csv:1:");
}

TEST_F(DsaCli, EmptyFileExitsTwo) { expect_input_error("empty.csv", "", "empty"); }

TEST_F(DsaCli, BadLifetimeExitsTwoNamingTheLine) {
  expect_input_error("life.csv", "id,lower,upper,size\nb1,0,3,4\nb2,5,5,4\n", "life.csv:3:");
}

TEST_F(DsaCli, SolvesAndWritesAValidPacking) {
  std::string file = write("ok.csv", "id,lower,upper,size\nb1,0,3,4\nb2,3,9,4\nb3,0,9,4\n"
                                     "b4,9,21,4\nb5,0,21,4\n");
  std::string out = (fs::path(dir_) / "solution.csv").string();
  std::string json = (fs::path(dir_) / "result.json").string();
  CliRun run = run_memo("dsa " + file + " --out " + out + " --json " + json);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("optimal"), std::string::npos) << run.output;
  CsvContents solution = read_csv(out);
  Validation v = validate(solution.problem, solution.offsets, 12);
  EXPECT_TRUE(v.ok()) << v.summary();
  std::ifstream in(json);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* key : {"\"buffers\"", "\"load\"", "\"peak\"", "\"status\"", "\"seconds\""})
    EXPECT_NE(text.find(key), std::string::npos) << key << " in " << text;
}

TEST_F(DsaCli, CapacityBelowLoadIsInfeasible) {
  std::string file = write("two.csv", "id,lower,upper,size\na,0,2,4\nb,0,2,4\n");
  CliRun run = run_memo("dsa " + file + " --capacity 7 --solver exact");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("infeasible"), std::string::npos) << run.output;
}

TEST_F(DsaCli, BenchReadsCapacityFromFileName) {
  fs::create_directories(fs::path(dir_) / "sub");
  write("sub/X.12.csv", "id,lower,upper,size\nb1,0,3,4\nb2,3,9,4\nb3,0,9,4\nb4,9,21,4\nb5,0,21,4\n");
  CliRun run = run_memo("dsa --bench " + dir_);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("| sub/X.12.csv | 5 | 12 | 12 | 12 | 1.0000 | optimal |"),
            std::string::npos)
      << run.output;
}

TEST_F(DsaCli, CapacityZeroWithANonEmptyBufferIsInfeasible) {
  std::string file = write("one.csv", "id,lower,upper,size\na,0,2,4\n");
  for (const char* solver : {"auto", "bestfit", "exact"}) {
    CliRun run = run_memo("dsa " + file + " --capacity 0 --solver " + solver);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("status     infeasible"), std::string::npos) << solver << "\n" << run.output;
  }
}

TEST_F(DsaCli, SizesWhoseSumOverflowsExitTwoNamingTheLine) {
  expect_input_error("big.csv", "id,lower,upper,size\na,0,2,4611686018427387904\nb,0,2,4611686018427387904\n",
                     "big.csv:2:");
}

TEST_F(DsaCli, ADeviceThatNeverEndsIsRefusedWithoutReadingItAll) {
  if (!fs::exists("/dev/zero")) GTEST_SKIP() << "no /dev/zero";
  CliRun run = run_memo("dsa /dev/zero");
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_NE(run.output.find("/dev/zero:1: line longer than"), std::string::npos) << run.output;
}

TEST_F(DsaCli, UnknownSolverIsAUsageError) {
  std::string file = write("ok.csv", "id,lower,upper,size\nb1,0,3,4\n");
  EXPECT_EQ(run_memo("dsa " + file + " --solver magic").exit_code, 2);
}

}  // namespace
}  // namespace memo::plan
