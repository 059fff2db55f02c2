// train.optimizer.loraplus_lr_ratio: unset by default, a finite number > 0
// when set, null unsets it, to_yaml round-trips it; bad values are one-line
// errors naming the file, line and key.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/test_env.h"
#include "trainer/config/config.h"
#include "trainer/io/error.h"

namespace loratune::config {
namespace {

const char* kHead =
    "model:\n"
    "  path: m\n"
    "data:\n"
    "  train: t.jsonl\n"
    "output:\n"
    "  dir: o\n";

// The ratio on line 9 of a config.
std::string with_ratio(const std::string& value) {
  return std::string(kHead) + "train:\n  optimizer:\n    loraplus_lr_ratio: " + value + "\n";
}

// The one-line loratune::Error `f` throws (a test failure when it throws
// none, another exception, or several lines).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    EXPECT_EQ(e.kind(), ErrorKind::kConfig) << msg;
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected loratune::Error, got std::exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(LoraPlusConfig, UnsetByDefaultAndNullUnsets) {
  EXPECT_FALSE(TrainConfig{}.train.optimizer.loraplus_lr_ratio.has_value());
  const TrainConfig plain = config_from_yaml_string(kHead);
  EXPECT_FALSE(plain.train.optimizer.loraplus_lr_ratio.has_value());
  EXPECT_NE(to_yaml(plain).find("loraplus_lr_ratio: ~"), std::string::npos) << to_yaml(plain);

  const TrainConfig set = config_from_yaml_string(with_ratio("16"));
  ASSERT_TRUE(set.train.optimizer.loraplus_lr_ratio.has_value());
  EXPECT_EQ(*set.train.optimizer.loraplus_lr_ratio, 16.0);
  EXPECT_NE(set, plain);

  const TrainConfig unset =
      config_from_yaml_string(with_ratio("16"), {"train.optimizer.loraplus_lr_ratio=null"});
  EXPECT_FALSE(unset.train.optimizer.loraplus_lr_ratio.has_value());
  EXPECT_EQ(unset, plain);

  const TrainConfig over =
      config_from_yaml_string(kHead, {"train.optimizer.loraplus_lr_ratio=0.5"});
  ASSERT_TRUE(over.train.optimizer.loraplus_lr_ratio.has_value());
  EXPECT_EQ(*over.train.optimizer.loraplus_lr_ratio, 0.5);
}

TEST(LoraPlusConfig, ToYamlRoundTrips) {
  const TrainConfig set = config_from_yaml_string(with_ratio("2.5"));
  const std::string yaml = to_yaml(set);
  EXPECT_NE(yaml.find("loraplus_lr_ratio: 2.5"), std::string::npos) << yaml;
  EXPECT_EQ(config_from_yaml_string(yaml), set);
}

TEST(LoraPlusConfig, BadValuesAreOneLineErrorsNamingTheKey) {
  const std::string dir = test::make_temp_dir("loraplus-config");
  struct Case {
    const char* name;
    const char* value;
    const char* expect;  // after "<path>:9: train.optimizer.loraplus_lr_ratio: "
  };
  const std::vector<Case> cases = {
      {"zero", "0", "must be a finite number > 0, got 0.0"},
      {"negative", "-1", "must be a finite number > 0, got -1.0"},
      {"word", "abc", "expected a number, got 'abc'"},
      {"nan", ".nan", "must be a finite number > 0, got .nan"},
      {"inf", ".inf", "must be a finite number > 0, got .inf"},
      {"list", "[16]", "expected a number, got a list"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir + "/" + c.name + ".yaml";
    test::write_file(path, with_ratio(c.value));
    const std::string msg = error_of([&] { load_train_config(path, {}); });
    EXPECT_EQ(msg, path + ":9: train.optimizer.loraplus_lr_ratio: " + c.expect);
  }
  // A plain "nan" (not YAML's .nan) fails too, naming the key.
  const std::string path = dir + "/plain_nan.yaml";
  test::write_file(path, with_ratio("nan"));
  EXPECT_EQ(error_of([&] {
              load_train_config(path, {});
            }).rfind(path + ":9: train.optimizer.loraplus_lr_ratio: ", 0),
            0u);
  // Overrides are named as their origin.
  EXPECT_EQ(
      error_of([] { config_from_yaml_string(kHead, {"train.optimizer.loraplus_lr_ratio=-1"}); }),
      "override 'train.optimizer.loraplus_lr_ratio=-1': train.optimizer.loraplus_lr_ratio: "
      "must be a finite number > 0, got -1.0");
}

}  // namespace
}  // namespace loratune::config
