#include "core/logging.h"

#include <gtest/gtest.h>

namespace kv::log {
namespace {

TEST(Logging, LevelsAndFormats) {
  EXPECT_TRUE(SetLevel("warn").ok());
  EXPECT_FALSE(Enabled(Level::kInfo));
  EXPECT_TRUE(Enabled(Level::kError));
  EXPECT_FALSE(SetLevel("loud").ok());
  EXPECT_EQ(GetLevel(), Level::kWarn);
  EXPECT_TRUE(SetLevel("debug").ok());

  testing::internal::CaptureStderr();
  Info("page_quarantined", "key", "ab12", "tier", "nvme", "reason", "xxh3 mismatch", "bytes",
       41984);
  std::string text = testing::internal::GetCapturedStderr();
  EXPECT_NE(text.find(" I page_quarantined key=ab12 tier=nvme reason=\"xxh3 mismatch\" "
                      "bytes=41984"),
            std::string::npos)
      << text;

  ASSERT_TRUE(SetFormat("json").ok());
  testing::internal::CaptureStderr();
  Warn("lease_expired", "handle", 7);
  text = testing::internal::GetCapturedStderr();
  EXPECT_NE(text.find("\"level\":\"warn\",\"event\":\"lease_expired\",\"handle\":\"7\""),
            std::string::npos)
      << text;
  ASSERT_TRUE(SetFormat("text").ok());
  EXPECT_FALSE(SetFormat("xml").ok());

  SetLevel(Level::kError);
  testing::internal::CaptureStderr();
  Info("suppressed");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  SetLevel(Level::kInfo);
}

}  // namespace
}  // namespace kv::log
