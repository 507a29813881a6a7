// Outputs never destroy anything (issue 15, class 4), from the outside: a
// FIFO, a device node or a symlink given as a report is written through and
// never replaced by a regular file; an output that names an input is refused
// with exit 2 and the input untouched; one --out is written by one run at a
// time, and a killed run does not leave it locked; a failed append to
// metrics.jsonl stops the run with exit 1; --resume leaves metrics.jsonl as
// the uninterrupted run's; a full disk during a checkpoint save exits 1,
// leaves no temporary and the previous checkpoint whole (fault injection, and
// a real full tmpfs when the test may mount one).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <fcntl.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "cli_runner.h"

namespace memo {
namespace {

namespace fs = std::filesystem;
using testing::run_memo;

const std::string kQuick = " --steps 1 --seq-len 16 --batch 1 --log-every 100 ";

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_a_fifo(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

// Drains a FIFO on a thread while a command runs; the reader is open before
// memo starts, so memo's open for writing does not block.
class FifoReader {
 public:
  explicit FifoReader(const fs::path& p) {
    fd_ = ::open(p.c_str(), O_RDONLY | O_NONBLOCK);
    thread_ = std::thread([this] {
      char buf[4096];
      while (true) {
        pollfd pfd{fd_, POLLIN, 0};
        ::poll(&pfd, 1, 20);
        const ssize_t n = ::read(fd_, buf, sizeof buf);
        if (n > 0) {
          text_.append(buf, static_cast<size_t>(n));
          continue;
        }
        if (done_) break;
      }
    });
  }
  // The text written, once the writer is done.
  std::string finish() {
    done_ = true;
    thread_.join();
    ::close(fd_);
    return text_;
  }

 private:
  int fd_ = -1;
  std::atomic<bool> done_{false};
  std::string text_;
  std::thread thread_;
};

TEST(Outputs, AFifoGivenAsAReportIsWrittenThroughNotReplaced) {
  auto dir = testing::scratch_dir("out_fifo");
  const auto fifo = dir / "report.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  FifoReader reader(fifo);
  auto r = run_memo("plan --model tiny --seq-len 1024 --json " + fifo.string());
  const std::string text = reader.finish();
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(is_a_fifo(fifo)) << "the FIFO was replaced";
  EXPECT_TRUE(nlohmann::json::parse(text, nullptr, false).is_object()) << "the reader got: " << text;
  fs::remove_all(dir);
}

TEST(Outputs, ADeviceNodeGivenAsAReportStaysADevice) {
  if (::geteuid() != 0) GTEST_SKIP() << "creating a device node (a copy of /dev/null) needs root";
  auto dir = testing::scratch_dir("out_dev");
  const auto node = dir / "null";
  ASSERT_EQ(::mknod(node.c_str(), S_IFCHR | 0666, ::makedev(1, 3)), 0);
  for (const std::string& args :
       {"plan --model tiny --seq-len 1024 --json " + node.string(), "train" + kQuick + "--json " + node.string(),
        "train" + kQuick + "--trace " + node.string()}) {
    auto r = run_memo(args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.output;
    struct stat st {};
    ASSERT_EQ(::lstat(node.c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode)) << args << ": the device node was replaced by a regular file";
  }
  fs::remove_all(dir);
}

TEST(Outputs, ASymlinkGivenAsAReportStaysALinkAndItsTargetGetsTheReport) {
  auto dir = testing::scratch_dir("out_link");
  testing::write_text(dir / "target.json", "old");
  fs::create_symlink("target.json", dir / "link.json");
  testing::write_text(dir / "x.csv", "id,lower,upper,size\na,0,2,4\nb,1,3,4\n");
  for (const std::string& args : {"plan --model tiny --seq-len 1024 --json " + (dir / "link.json").string(),
                                  "dsa " + (dir / "x.csv").string() + " --json " + (dir / "link.json").string(),
                                  "train" + kQuick + "--json " + (dir / "link.json").string()}) {
    testing::write_text(dir / "target.json", "old");
    auto r = run_memo(args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.output;
    EXPECT_TRUE(fs::is_symlink(dir / "link.json")) << args << ": the symlink was replaced";
    EXPECT_TRUE(nlohmann::json::parse(read_all(dir / "target.json"), nullptr, false).is_object() ||
                nlohmann::json::parse(read_all(dir / "target.json"), nullptr, false).is_array())
        << args << ": the target did not get the report";
  }
  fs::remove_all(dir);
}

TEST(Outputs, AnOutputThatNamesAnInputIsRefusedAndTheInputKept) {
  auto dir = testing::scratch_dir("out_input");
  const std::string text(400, 'a');
  const auto data = testing::write_text(dir / "data.txt", text);
  const auto csv = testing::write_text(dir / "x.csv", "id,lower,upper,size\na,0,2,4\n");
  const auto toml = testing::write_text(dir / "run.toml", "steps = 1\nseq_len = 16\nbatch = 1\n");
  // A checkpoint directory to use as --model.
  auto made = run_memo("train --steps 1 --seq-len 16 --batch 1 --checkpoint-every 1 --out " + (dir / "run").string());
  ASSERT_EQ(made.code, 0) << made.output;
  const auto model = dir / "run" / "checkpoints" / "step-00000001";
  const std::string config_before = read_all(model / "config.json");
  const std::string weights_before = read_all(model / "model.safetensors");
  struct Case {
    std::string args, fragment;
  };
  const std::vector<Case> cases = {
      {"train" + kQuick + "--data " + data + " --json " + data, "--json"},
      {"train" + kQuick + "--data " + data + " --trace " + data, "--trace"},
      {"train --config " + toml + " --json " + toml, "--config"},
      {"train" + kQuick + "--model " + model.string() + " --json " + (model / "model.safetensors").string(),
       "model.safetensors"},
      {"train" + kQuick + "--model " + model.string() + " --out " + model.string(), "--out"},
      {"train" + kQuick + "--model " + model.string() + " --out " + (dir / "run").string() + " --checkpoint-every 1",
       "prunes"},
      {"eval --model " + model.string() + " --data " + data + " --seq-len 8 --json " +
           (model / "config.json").string(), "--json"},
      {"eval --model " + model.string() + " --data " + data + " --seq-len 8 --json " + data, "--json"},
      {"plan --model " + (model / "config.json").string() + " --json " + (model / "config.json").string(),
       "--json"},
      {"bench --model " + (model / "config.json").string() + " --json " + (model / "config.json").string(),
       "--json"},
      {"dsa " + csv + " --out " + csv, "--out"},
      {"dsa " + csv + " --json " + csv, "--json"},
  };
  for (const auto& c : cases) {
    auto r = run_memo(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.fragment), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find("input"), std::string::npos) << c.args << "\n" << r.output;
  }
  EXPECT_EQ(read_all(data), text);
  EXPECT_EQ(read_all(csv), "id,lower,upper,size\na,0,2,4\n");
  EXPECT_EQ(read_all(toml), "steps = 1\nseq_len = 16\nbatch = 1\n");
  EXPECT_EQ(read_all(model / "config.json"), config_before);
  EXPECT_EQ(read_all(model / "model.safetensors"), weights_before);
  fs::remove_all(dir);
}

TEST(Outputs, ADirectoryOrAnOverlongNameIsBadInputNamingThePath) {
  auto dir = testing::scratch_dir("out_paths");
  const std::string long_name(300, 'x');  // over NAME_MAX (255)
  for (const std::string& args :
       {"train" + kQuick + "--json " + dir.string(), "plan --model tiny --json " + dir.string(),
        "train" + kQuick + "--json " + (dir / long_name / "r.json").string(),
        "train" + kQuick + "--out " + (dir / long_name).string(),
        "train" + kQuick + "--model " + (dir / long_name).string(),
        "train --steps 3 --seq-len 16 --batch 1 --planned-memory --plan-cache " + (dir / long_name).string(),
        "plan --model " + (dir / long_name).string(), "eval --model " + (dir / long_name).string() + " --data x"}) {
    auto r = run_memo(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_EQ(r.output.find("filesystem error"), std::string::npos) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(dir.string()), std::string::npos) << args << ": the path is not named\n" << r.output;
  }
  fs::remove_all(dir);
}

// A run refused after it took the --out lock (here: an unknown policy, found
// when the trainer is built) leaves no directory it created behind, and an
// --out that existed stays.
TEST(Outputs, ARefusedRunLeavesNoOutDirectoryItCreated) {
  auto dir = testing::scratch_dir("out_refused");
  const auto fresh = dir / "new" / "run";
  auto r = run_memo("train" + kQuick + "--policy bogus --out " + fresh.string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_FALSE(fs::exists(dir / "new")) << r.output;
  fs::create_directories(dir / "kept");
  r = run_memo("train" + kQuick + "--policy bogus --out " + (dir / "kept").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(fs::is_directory(dir / "kept"));
  fs::remove_all(dir);
}

TEST(Outputs, AReadOnlyDirectoryIsBadInput) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes into read-only directories";
  auto dir = testing::scratch_dir("out_ro");
  fs::create_directories(dir / "ro");
  fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  auto r = run_memo("train" + kQuick + "--json " + (dir / "ro" / "r.json").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find((dir / "ro").string()), std::string::npos) << r.output;
  fs::permissions(dir / "ro", fs::perms::owner_all);
  fs::remove_all(dir);
}

// Starts `memo ARGS` in the background; returns its pid.
pid_t spawn_memo(const std::string& args) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    std::string cmd = std::string(MEMO_BINARY) + " " + args + " > /dev/null 2>&1";
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

TEST(Outputs, OneOutDirectoryIsWrittenByOneRunAndAKilledRunReleasesIt) {
  auto dir = testing::scratch_dir("out_lock");
  const auto out = dir / "o";
  const pid_t first = spawn_memo("train --steps 100000 --seq-len 16 --batch 1 --log-every 100000 --out " + out.string());
  // Wait until the first run holds the lock (it writes its pid there).
  bool locked = false;
  for (int i = 0; i < 600 && !locked; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    locked = fs::exists(out / "metrics.jsonl");
  }
  ASSERT_TRUE(locked) << "the first run did not start";
  auto second = run_memo("train" + kQuick + "--out " + out.string());
  EXPECT_EQ(second.code, 2) << second.output;
  EXPECT_NE(second.output.find("in use by another memo run (pid " + std::to_string(first) + ")"),
            std::string::npos)
      << second.output;
  // A crash (SIGKILL: no clean-up at all) releases the directory.
  ::kill(first, SIGKILL);
  int status = 0;
  ::waitpid(first, &status, 0);
  auto third = run_memo("train" + kQuick + "--out " + out.string());
  EXPECT_EQ(third.code, 0) << third.output;
  fs::remove_all(dir);
}

// Sets an environment variable for the memo runs of one test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { ::setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

std::vector<nlohmann::json> metrics_lines(const fs::path& out) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(out / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line, nullptr, false));
  return lines;
}

TEST(Outputs, AFailedAppendToMetricsStopsTheRunWithExit1) {
  auto dir = testing::scratch_dir("out_append");
  // The 1st file named like metrics.jsonl is its creation; the 4th the append of step 3.
  ScopedEnv fault("MEMO_FAULT_ENOSPC", "metrics.jsonl:4");
  auto r = run_memo("train --steps 6 --seq-len 16 --batch 1 --out " + (dir / "o").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step 6/6"), std::string::npos) << "the run went on:\n" << r.output;
  EXPECT_FALSE(fs::exists(dir / "o" / "summary.json"));
  fs::remove_all(dir);
}

TEST(Outputs, ResumeLeavesMetricsAsTheUninterruptedRunWrites) {
  auto dir = testing::scratch_dir("out_resume");
  const std::string run = "train --steps 10 --seq-len 16 --batch 1 --checkpoint-every 3 --keep-checkpoints 0 ";
  auto whole = run_memo(run + "--out " + (dir / "a").string());
  ASSERT_EQ(whole.code, 0) << whole.output;
  // A run that crashed after step 9 and during the append of step 10: its
  // newest checkpoint is step 6 once 9's is gone (say, mid-save).
  fs::copy(dir / "a", dir / "b", fs::copy_options::recursive);
  fs::remove_all(dir / "b" / "checkpoints" / "step-00000009");
  fs::remove_all(dir / "b" / "checkpoints" / "step-00000010");
  {
    std::ofstream torn(dir / "b" / "metrics.jsonl", std::ios::app);
    torn << R"({"grad_norm":1.0,"lo)";
  }
  auto resumed = run_memo(run + "--out " + (dir / "b").string() + " --resume " + (dir / "b").string());
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  const auto a = metrics_lines(dir / "a");
  const auto b = metrics_lines(dir / "b");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u) << read_all(dir / "b" / "metrics.jsonl");
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(b[i]["step"], a[i]["step"]);
    EXPECT_EQ(b[i]["loss"], a[i]["loss"]) << "step " << i + 1;  // bitwise: resume reproduces the run
  }
  fs::remove_all(dir);
}

// After a save that failed: exit 1 and the disk-full message, no temporary
// left, and the run resumes from the checkpoint before it with the losses of
// the uninterrupted run.
void expect_failed_save_keeps_the_last_checkpoint(const testing::CliResult& r, const fs::path& out, const std::string& run,
                                                  const fs::path& reference_json) {
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out / "checkpoints")) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"step-00000002"}) << "a partial temporary was left behind";
  auto resumed = run_memo(run + "--out " + out.string() + " --resume " + out.string() + " --json " +
                          (out / "resumed.json").string());
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  std::ifstream a_in(reference_json), b_in(out / "resumed.json");
  const auto a = nlohmann::json::parse(a_in)["steps"];
  const auto b = nlohmann::json::parse(b_in)["steps"];
  ASSERT_EQ(b.size(), a.size() - 2);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b[i]["loss"], a[i + 2]["loss"]) << "step " << i + 3;
}

TEST(Outputs, ADiskFullDuringACheckpointSaveExits1AndKeepsTheLastCheckpoint) {
  auto dir = testing::scratch_dir("out_enospc");
  const std::string run = "train --steps 6 --seq-len 16 --batch 1 --checkpoint-every 2 --keep-checkpoints 1 ";
  auto whole = run_memo(run + "--out " + (dir / "a").string() + " --json " + (dir / "a.json").string());
  ASSERT_EQ(whole.code, 0) << whole.output;
  // Every file of the save may be the one that fails.
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json"}) {
    const auto out = dir / (std::string("o-") + file);
    ScopedEnv fault("MEMO_FAULT_ENOSPC", std::string("step-00000004.tmp/") + file);
    auto r = run_memo(run + "--out " + out.string());
    ::unsetenv("MEMO_FAULT_ENOSPC");
    SCOPED_TRACE(file);
    expect_failed_save_keeps_the_last_checkpoint(r, out, run, dir / "a.json");
  }
  fs::remove_all(dir);
}

TEST(Outputs, ARealFullDiskDuringACheckpointSaveExits1AndKeepsTheLastCheckpoint) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  auto dir = testing::scratch_dir("out_tmpfs");
  const auto mnt = dir / "mnt";
  fs::create_directories(mnt);
  // One checkpoint of the tiny model is 4.7 MiB: the first fits, the second
  // (written before the first is pruned) does not.
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=7m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
  struct Unmount {  // on every way out of the test, failed assertions included
    const fs::path& at;
    ~Unmount() { ::umount(at.c_str()); }
  } unmount{mnt};
  const std::string run = "train --steps 6 --seq-len 16 --batch 1 --checkpoint-every 2 --keep-checkpoints 1 ";
  auto whole = run_memo(run + "--out " + (dir / "a").string() + " --json " + (dir / "a.json").string());
  ASSERT_EQ(whole.code, 0) << whole.output;
  auto r = run_memo(run + "--out " + (mnt / "o").string());
  // Resuming writes a checkpoint too: give the file system room (a tmpfs
  // keeps its files when remounted).
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", MS_REMOUNT, "size=64m"), 0) << std::strerror(errno);
  expect_failed_save_keeps_the_last_checkpoint(r, mnt / "o", run, dir / "a.json");
  ::umount(mnt.c_str());  // before removing the directory it is mounted on
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace memo
