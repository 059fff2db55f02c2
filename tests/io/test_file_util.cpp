// trainer/io/file_util: atomic files, atomic directories, JSON errors.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/test_env.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"

namespace fs = std::filesystem;
using loratune::Error;
using namespace loratune::io;
using loratune::test::make_temp_dir;

namespace {

size_t count_entries(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

// The message of the Error `f` throws; fails the test if it throws nothing.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected loratune::Error";
  return "";
}

}  // namespace

TEST(AtomicFile, WriteFileAtomicReplacesAndLeavesNoTemp) {
  const std::string dir = make_temp_dir("fu");
  const std::string path = dir + "/a.txt";
  write_file_atomic(path, "one");
  write_file_atomic(path, "two");
  EXPECT_EQ(read_file(path), "two");
  EXPECT_EQ(count_entries(dir), 1u);
}

TEST(AtomicFile, AbandonedWriteRemovesTempAndKeepsTarget) {
  const std::string dir = make_temp_dir("fu");
  const std::string path = dir + "/a.txt";
  write_file_atomic(path, "old");
  std::string tmp;
  {
    AtomicFile f(path);
    tmp = f.temp_path();
    f.write("new", 3);
    EXPECT_TRUE(fs::exists(tmp));
    EXPECT_EQ(tmp.rfind(path + ".tmp.", 0), 0u);
  }  // no commit
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(read_file(path), "old");
  EXPECT_EQ(count_entries(dir), 1u);
}

TEST(AtomicFile, ErrorsNameThePath) {
  const std::string missing = make_temp_dir("fu") + "/no/such/dir/x";
  EXPECT_NE(error_of([&] { write_file_atomic(missing, "x"); }).find(missing), std::string::npos);
  EXPECT_NE(error_of([&] { read_file(missing); }).find(missing), std::string::npos);
  AtomicFile f(make_temp_dir("fu") + "/y");
  f.commit();
  EXPECT_THROW(f.write("x", 1), Error);
  EXPECT_THROW(f.commit(), Error);
}

TEST(AtomicDir, CommitPublishesContents) {
  const std::string target = make_temp_dir("fu") + "/ckpt";
  {
    AtomicDir d(target, false);
    EXPECT_FALSE(fs::exists(target));
    write_file_atomic(d.path() + "/w.bin", "weights");
    fs::create_directory(d.path() + "/sub");
    write_file_atomic(d.path() + "/sub/x", "x");
    d.commit();
  }
  EXPECT_EQ(read_file(target + "/w.bin"), "weights");
  EXPECT_EQ(read_file(target + "/sub/x"), "x");
  EXPECT_EQ(count_entries(fs::path(target).parent_path().string()), 1u);
}

TEST(AtomicDir, AbortRemovesTempDirectory) {
  const std::string parent = make_temp_dir("fu");
  std::string tmp;
  {
    AtomicDir d(parent + "/ckpt", false);
    tmp = d.path();
    write_file_atomic(tmp + "/w.bin", "weights");
  }
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(count_entries(parent), 0u);
}

TEST(AtomicDir, RefusesToOverwriteUnlessAsked) {
  const std::string parent = make_temp_dir("fu");
  const std::string target = parent + "/ckpt";
  fs::create_directory(target);
  write_file_atomic(target + "/old", "old");
  {
    AtomicDir d(target, false);
    write_file_atomic(d.path() + "/new", "new");
    std::string msg = error_of([&] { d.commit(); });
    EXPECT_NE(msg.find(target), std::string::npos) << msg;
    EXPECT_NE(msg.find("already exists"), std::string::npos) << msg;
  }
  EXPECT_EQ(read_file(target + "/old"), "old");
  EXPECT_EQ(count_entries(parent), 1u);
  {
    AtomicDir d(target, true);
    write_file_atomic(d.path() + "/new", "new");
    d.commit();
  }
  EXPECT_FALSE(fs::exists(target + "/old"));
  EXPECT_EQ(read_file(target + "/new"), "new");
  EXPECT_EQ(count_entries(parent), 1u);  // the moved-aside old target is gone
}

TEST(Json, ParseErrorsCarryFileLineAndColumn) {
  const std::string path = make_temp_dir("fu") + "/bad.json";
  loratune::test::write_file(path, "{\n  \"a\": 1,\n  \"b\": [1, 2,,]\n}\n");
  const std::string msg = error_of([&] { read_json(path); });
  EXPECT_EQ(msg.rfind(path + ":3:14: invalid JSON", 0), 0u) << msg;
  EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << msg;
}

TEST(Json, ErrorAtEndOfInputAndDuplicateKeys) {
  std::string msg = error_of([] { parse_json("{\"a\": 1", "cfg.json"); });
  EXPECT_EQ(msg.rfind("cfg.json:1:8: invalid JSON", 0), 0u) << msg;
  msg = error_of([] { parse_json(R"({"a": {"x": 1, "x": 2}})", "cfg.json"); });
  EXPECT_NE(msg.find("cfg.json: duplicate key \"x\""), std::string::npos) << msg;
  // The same key in different objects is fine.
  EXPECT_EQ(parse_json(R"({"x": {"x": 1}, "y": {"x": 2}})", "ok")["y"]["x"], 2);
}

// nlohmann stops at a NUL byte and ignores the rest; the code that walks a
// parsed value recurses, so 100000 levels of [ would overflow its stack.
TEST(Json, NulBytesAndDeepNestingAreRefused) {
  std::string msg = error_of([] { parse_json(std::string("{\"a\": 1}\0{garbage", 16), "t.json"); });
  EXPECT_EQ(msg, "t.json:1:9: invalid JSON: a NUL byte");
  msg = error_of(
      [] { parse_ordered_json(std::string("[1,\0]", 5), "", loratune::ErrorKind::kData); });
  EXPECT_EQ(msg, "invalid JSON at column 4: a NUL byte");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  msg = error_of([&] { parse_json(deep, "deep.json"); });
  EXPECT_EQ(msg, "deep.json: JSON nested deeper than 256 levels");
  msg = error_of(
      [&] { parse_ordered_json("{\"a\": " + deep + "}", "", loratune::ErrorKind::kData); });
  EXPECT_EQ(msg, "JSON nested deeper than 256 levels");
  // 256 levels are fine, 257 are not.
  EXPECT_NO_THROW(parse_json(std::string(256, '[') + std::string(256, ']'), "ok"));
  EXPECT_EQ(error_of([] { parse_json(std::string(257, '[') + std::string(257, ']'), "x"); }),
            "x: JSON nested deeper than 256 levels");
}

TEST(Json, WriteJsonAtomicRoundTrips) {
  const std::string path = make_temp_dir("fu") + "/c.json";
  nlohmann::json j = {{"b", 1}, {"a", {1, 2}}};
  write_json_atomic(path, j);
  EXPECT_EQ(read_json(path), j);
  EXPECT_EQ(read_file(path), j.dump(2) + "\n");
}

TEST(ClosestMatch, SuggestsOnlyCloseKeys) {
  const std::vector<std::string> keys = {"learning_rate", "lora_alpha", "lora_r", "max_steps"};
  EXPECT_EQ(loratune::closest_match("learning_rte", keys), "learning_rate");
  EXPECT_EQ(loratune::closest_match("lora_aplha", keys), "lora_alpha");
  EXPECT_EQ(loratune::closest_match("lora_q", keys), "lora_r");
  EXPECT_EQ(loratune::closest_match("batch_size", keys), "");
  EXPECT_EQ(loratune::closest_match("x", {}), "");
}
