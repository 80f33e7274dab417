// A minimal test harness for the C++ tests: TEST_CASE registers a function, the
// EXPECT macros record failures with file:line, and main() in test_main.cpp runs them.
#pragma once

#include <cmath>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace seqlstm_test {

struct TestCase {
  std::string name;
  std::function<void()> body;
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

inline int& failure_count() {
  static int failures = 0;
  return failures;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> body) {
    registry().push_back({name, std::move(body)});
  }
};

inline void report_failure(const char* file, int line, const std::string& message) {
  ++failure_count();
  std::cerr << file << ":" << line << ": " << message << "\n";
}

}  // namespace seqlstm_test

#define SEQLSTM_CONCAT_INNER(a, b) a##b
#define SEQLSTM_CONCAT(a, b) SEQLSTM_CONCAT_INNER(a, b)

#define TEST_CASE(name)                                                         \
  static void SEQLSTM_CONCAT(test_body_, __LINE__)();                           \
  static seqlstm_test::Registrar SEQLSTM_CONCAT(test_registrar_, __LINE__)(     \
      name, &SEQLSTM_CONCAT(test_body_, __LINE__));                             \
  static void SEQLSTM_CONCAT(test_body_, __LINE__)()

#define EXPECT_TRUE(condition)                                                  \
  do {                                                                          \
    if (!(condition)) {                                                         \
      seqlstm_test::report_failure(__FILE__, __LINE__, "expected " #condition); \
    }                                                                           \
  } while (0)

#define EXPECT_EQ(actual, expected)                                             \
  do {                                                                          \
    const auto& actual_value = (actual);                                        \
    const auto& expected_value = (expected);                                    \
    if (!(actual_value == expected_value)) {                                    \
      std::ostringstream message;                                               \
      message << #actual " == " #expected ": got " << actual_value              \
              << ", expected " << expected_value;                               \
      seqlstm_test::report_failure(__FILE__, __LINE__, message.str());          \
    }                                                                           \
  } while (0)

#define EXPECT_NEAR(actual, expected, tolerance)                                \
  do {                                                                          \
    const double actual_value = (actual);                                       \
    const double expected_value = (expected);                                   \
    if (!(std::fabs(actual_value - expected_value) <= (tolerance))) {           \
      std::ostringstream message;                                               \
      message << #actual " near " #expected ": got " << actual_value            \
              << ", expected " << expected_value << " within " << (tolerance);  \
      seqlstm_test::report_failure(__FILE__, __LINE__, message.str());          \
    }                                                                           \
  } while (0)

// Expects `statement` to throw an exception whose what() contains `fragment`.
#define EXPECT_THROWS_WITH(statement, fragment)                                 \
  do {                                                                          \
    bool thrown = false;                                                        \
    try {                                                                       \
      statement;                                                                \
    } catch (const std::exception& error) {                                     \
      thrown = true;                                                            \
      if (std::string(error.what()).find(fragment) == std::string::npos) {      \
        seqlstm_test::report_failure(__FILE__, __LINE__,                        \
                                     std::string("message lacks '") + fragment + \
                                         "': " + error.what());                 \
      }                                                                         \
    }                                                                           \
    if (!thrown) {                                                              \
      seqlstm_test::report_failure(__FILE__, __LINE__,                          \
                                   "expected " #statement " to throw");         \
    }                                                                           \
  } while (0)
