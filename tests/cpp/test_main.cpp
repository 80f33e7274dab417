// Runs every registered C++ test, or those whose name contains argv[1].
#include <iostream>
#include <string>

#include "harness.h"

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  int run = 0;
  int failed = 0;
  for (const auto& test : seqlstm_test::registry()) {
    if (!filter.empty() && test.name.find(filter) == std::string::npos) {
      continue;
    }
    const int failures_before = seqlstm_test::failure_count();
    try {
      test.body();
    } catch (const std::exception& error) {
      seqlstm_test::report_failure(__FILE__, __LINE__,
                                   "unexpected exception: " + std::string(error.what()));
    }
    ++run;
    const bool passed = seqlstm_test::failure_count() == failures_before;
    failed += passed ? 0 : 1;
    std::cout << (passed ? "PASS " : "FAIL ") << test.name << "\n";
  }
  std::cout << run - failed << " passed, " << failed << " failed\n";
  return failed == 0 && run > 0 ? 0 : 1;
}
