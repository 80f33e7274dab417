// The CTF parser called directly, without Python: indexing, parsing, errors with
// path:line:, the lenient mode and the number grammar. Test files come from
// $SEQLSTM_TEST_DATA (ctest sets it to tests/data).
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <ostream>
#include <string>
#include <vector>

#include "../../csrc/reader/ctf_parser.h"
#include "../../csrc/reader/ctf_text.h"
#include "harness.h"

// Prints a vector in EXPECT_EQ failure messages.
template <typename T>
std::ostream& operator<<(std::ostream& stream, const std::vector<T>& values) {
  stream << "{";
  for (size_t k = 0; k < values.size(); ++k) {
    stream << (k ? ", " : "") << values[k];
  }
  return stream << "}";
}

namespace {

namespace ctf = seqlstm::reader;

std::string test_data(const std::string& relative) {
  const char* root = std::getenv("SEQLSTM_TEST_DATA");
  return std::string(root ? root : "tests/data") + "/" + relative;
}

// A file in /tmp with the given bytes, removed when the object goes away.
class TemporaryFile {
 public:
  explicit TemporaryFile(const std::string& content) {
    char name[] = "/tmp/seqlstm-ctf-test-XXXXXX";
    const int descriptor = ::mkstemp(name);
    path_ = name;
    if (descriptor >= 0) {
      const ssize_t written = ::write(descriptor, content.data(), content.size());
      (void)written;
      ::close(descriptor);
    }
  }
  ~TemporaryFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const std::vector<ctf::StreamSpec> streams = {{"x", 2000, true}, {"y", 5, false}};

// Indexes, scans and parses a whole file with one chunk per chunk_size bytes.
ctf::ParseResult parse_file(const ctf::MappedFile& file, int64_t chunk_size = 32 << 20,
                            int64_t max_skipped = 0,
                            const std::vector<ctf::StreamSpec>& specs = streams) {
  const ctf::FileIndex index = ctf::index_file(file, chunk_size);
  std::vector<int64_t> begins, ends, lines;
  for (const ctf::ChunkInfo& chunk : index.chunks) {
    const ctf::SequenceTable table =
        ctf::scan_chunk(file, index.has_ids, chunk.begin, chunk.end, chunk.first_line);
    begins.insert(begins.end(), table.begin.begin(), table.begin.end());
    ends.insert(ends.end(), table.end.begin(), table.end.end());
    lines.insert(lines.end(), table.first_line.begin(), table.first_line.end());
  }
  return ctf::parse_sequences(file, index.has_ids, specs, begins.data(), ends.data(),
                              lines.data(), static_cast<int64_t>(begins.size()), max_skipped);
}

// Parses text as one range, which the parser splits into sequences.
ctf::ParseResult parse_text(const std::string& text, int64_t max_skipped = 0) {
  TemporaryFile file(text);
  ctf::MappedFile mapped(file.path());
  const ctf::FileIndex index = ctf::index_file(mapped, int64_t{1} << 40);
  const int64_t begin = index.data_begin;
  const int64_t end = mapped.size();
  const int64_t line = 1;
  return ctf::parse_sequences(mapped, index.has_ids, streams, &begin, &end, &line, 1,
                              max_skipped);
}

// Returns the message of the CtfError that parsing `text` throws, or "" if none.
std::string parse_error(const std::string& text) {
  TemporaryFile file(text);
  try {
    ctf::MappedFile mapped(file.path());
    parse_file(mapped);
  } catch (const ctf::CtfError& error) {
    const std::string message = error.what();
    const std::string prefix = file.path() + ":";
    return message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : "no path: " + message;
  }
  return "";
}

}  // namespace

TEST_CASE("ctf parses the reference file") {
  ctf::MappedFile file(test_data("ctf_cases/lf_reference.ctf"));
  const ctf::FileIndex index = ctf::index_file(file, 32 << 20);
  EXPECT_TRUE(index.has_ids);
  EXPECT_EQ(index.num_sequences, 2);
  EXPECT_EQ(index.num_samples, 3);
  EXPECT_EQ(index.chunks.size(), size_t{1});

  const ctf::ParseResult result = parse_file(file);
  EXPECT_EQ(result.id, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(result.first_line, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(result.num_lines, (std::vector<int64_t>{2, 1}));
  const ctf::StreamData& x = result.streams[0];
  EXPECT_EQ(x.lengths, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(x.indices, (std::vector<int64_t>{560, 0, 424}));
  EXPECT_EQ(x.offsets, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(x.values, (std::vector<float>{1, 1, 1}));
  const ctf::StreamData& y = result.streams[1];
  EXPECT_EQ(y.lengths, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(y.values, (std::vector<float>{1, 0, 0, 0, 0, 0, 1, 0, 0, 0}));
}

TEST_CASE("ctf variants equal the reference file") {
  ctf::MappedFile reference_file(test_data("ctf_cases/lf_reference.ctf"));
  const ctf::ParseResult reference = parse_file(reference_file);
  for (const char* name : {"crlf.ctf", "utf8_bom_crlf.ctf", "no_trailing_newline.ctf",
                           "tab_separated.ctf", "space_separated.ctf"}) {
    ctf::MappedFile file(test_data(std::string("ctf_cases/") + name));
    const ctf::ParseResult result = parse_file(file);
    EXPECT_EQ(result.id, reference.id);
    EXPECT_EQ(result.streams[0].indices, reference.streams[0].indices);
    EXPECT_EQ(result.streams[0].offsets, reference.streams[0].offsets);
    EXPECT_EQ(result.streams[1].values, reference.streams[1].values);
  }
}

TEST_CASE("ctf case files raise at their line") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"utf16le_bom.ctf", ":1: the file is UTF-16"},
      {"empty_file.ctf", ":1: the file is empty"},
      {"id_without_streams.ctf", ":2: this line of sequence id 1"},
      {"duplicate_stream_on_line.ctf", ":1: stream `x` appears more than once"},
      {"sparse_index_equal_to_dim.ctf", ":2: stream `x`: sparse index 2000 is out of range"},
      {"sparse_index_negative.ctf", ":1: stream `x`: sparse index -1 is negative"},
      {"dense_values_in_sparse_stream.ctf", ":1: stream `x` is sparse"},
      {"leading_space_before_id.ctf", ":3: expected `|`"},
      {"dense_too_many_values.ctf", ":1: stream `y` has 6 values"},
      {"marker_per_value.ctf", ":1: stream `y` appears more than once"},
      {"label_missing.ctf", ":2: sequence id 1 has no sample of stream `y`"},
  };
  for (const auto& [name, expected] : cases) {
    const std::string path = test_data("ctf_cases/" + name);
    EXPECT_THROWS_WITH(
        {
          ctf::MappedFile file(path);
          parse_file(file);
        },
        path + expected);
  }
}

TEST_CASE("ctf short dense sample is zero-filled with a warning") {
  ctf::MappedFile file(test_data("ctf_cases/dense_too_few_values.ctf"));
  const ctf::ParseResult result = parse_file(file);
  EXPECT_EQ(result.streams[1].values, (std::vector<float>{0, 1, 0, 0, 0}));
  EXPECT_EQ(result.num_warnings, 1);
  EXPECT_EQ(result.warnings.size(), size_t{1});
  EXPECT_TRUE(result.warnings[0].find(":1: stream `y` has 3 of 5 values") != std::string::npos);
}

TEST_CASE("ctf chunks never split a sequence") {
  ctf::MappedFile file(test_data("../../seqlstm/data/Train.ctf"));
  for (int64_t chunk_size : {int64_t{1}, int64_t{100}, int64_t{4096}, int64_t{1} << 30}) {
    const ctf::FileIndex index = ctf::index_file(file, chunk_size);
    int64_t sequences = 0;
    int64_t samples = 0;
    int64_t expected_begin = 0;
    for (const ctf::ChunkInfo& chunk : index.chunks) {
      EXPECT_EQ(chunk.begin, expected_begin);
      const ctf::SequenceTable table =
          ctf::scan_chunk(file, true, chunk.begin, chunk.end, chunk.first_line);
      EXPECT_EQ(static_cast<int64_t>(table.id.size()), chunk.num_sequences);
      sequences += chunk.num_sequences;
      samples += chunk.num_samples;
      expected_begin = chunk.end;
    }
    EXPECT_EQ(expected_begin, file.size());
    EXPECT_EQ(sequences, 1247);
    EXPECT_EQ(samples, 5433);
    if (chunk_size == 1) {
      EXPECT_EQ(index.chunks.size(), size_t{1247});
    }
  }
}

TEST_CASE("ctf release keeps the file readable") {
  ctf::MappedFile file(test_data("../../seqlstm/data/Train.ctf"));
  const ctf::ParseResult before = parse_file(file);
  file.release(0, file.size());
  const ctf::ParseResult after = parse_file(file);
  EXPECT_EQ(after.streams[0].indices, before.streams[0].indices);
  EXPECT_EQ(after.streams[1].values, before.streams[1].values);
  EXPECT_EQ(after.id.size(), size_t{1247});
}

TEST_CASE("ctf lenient mode skips malformed sequences") {
  const std::string text =
      "0 |x 1:1 |y 1 0 0 0 0\n"
      "1 |x 2000:1 |y 1 0 0 0 0\n"
      "2 |x 3:1 |y 0 1 0 0 0\n";
  const ctf::ParseResult result = parse_text(text, 1);
  EXPECT_EQ(result.id, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(result.position, (std::vector<int64_t>{0, 0}));  // both from range 0
  EXPECT_EQ(result.streams[0].indices, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(result.streams[0].offsets, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(result.streams[1].values, (std::vector<float>{1, 0, 0, 0, 0, 0, 1, 0, 0, 0}));
  EXPECT_EQ(result.skipped.size(), size_t{1});
  EXPECT_TRUE(result.skipped[0].find(":2: stream `x`") != std::string::npos);
  EXPECT_THROWS_WITH(parse_text(text, 0), ":2: stream `x`");
}

TEST_CASE("ctf missing stream is fatal in lenient mode") {
  EXPECT_THROWS_WITH(parse_text("0 |x 1:1 |y 1 0 0 0 0\n1 |x 1:1\n", 10),
                     ":2: sequence id 1 has no sample of stream `y`");
}

TEST_CASE("ctf number grammar as in CNTK") {
  const std::vector<std::pair<std::string, float>> accepted = {
      {"45.", 45.0f}, {"02.0", 2.0f},  {"+1", 1.0f},         {"1e5", 1e5f},
      {"-7", -7.0f},  {"0.1", 0.1f},   {"9.10e-11", 9.10e-11f}, {"1E-2", 0.01f},
      {"1e-50", 0.0f}};
  for (const auto& [token, value] : accepted) {
    const ctf::ParseResult result = parse_text("0 |x 1:1 |y " + token + "\n");
    EXPECT_EQ(result.streams[1].values[0], value);
  }
  for (const std::string token :
       {".5", "2,0", "2:0", "2.0f", "2#0", "1e", "-", "inf", "nan", "1e39", "0x1"}) {
    EXPECT_TRUE(parse_error("0 |x 1:1 |y " + token + "\n").rfind("1: stream `y`", 0) == 0);
  }
}

TEST_CASE("ctf grammar errors name the line") {
  EXPECT_EQ(parse_error("0 |x 1:1 |y 1\n\n"), "2: this line of sequence id 0 has no sample "
                                               "of a declared stream. Expected `|name values` "
                                               "with one of the declared stream names");
  EXPECT_TRUE(parse_error("0 |x 1:1 | y 1\n").rfind("1: `|` must be followed", 0) == 0);
  EXPECT_TRUE(parse_error(" 0 |x 1:1 |y 1\n").rfind("1: expected a sequence id", 0) == 0);
  EXPECT_TRUE(parse_error("0 |x 1:1\n0 |y 1\n").rfind("1: sequence id 0 has 2 lines", 0) == 0);
  EXPECT_TRUE(parse_error("99999999999999999999 |x 1:1 |y 1\n").rfind("1: sequence id", 0) ==
              0);
}

TEST_CASE("ctf comments and undeclared streams are skipped") {
  const ctf::ParseResult result =
      parse_text("0 |# note |x 2:1|####|z 9 9 |y 0 0 1 0 0 |# end\n");
  EXPECT_EQ(result.streams[0].indices, (std::vector<int64_t>{2}));
  EXPECT_EQ(result.streams[1].values, (std::vector<float>{0, 0, 1, 0, 0}));
}

TEST_CASE("ctf file without ids has a sequence per line") {
  const ctf::ParseResult result = parse_text("|x 1:1 |y 1\n|x 2:1 |y 2\n");
  EXPECT_EQ(result.id, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(result.first_line, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(result.streams[0].indices, (std::vector<int64_t>{1, 2}));
}

TEST_CASE("ctf stream declarations are checked") {
  EXPECT_THROWS_WITH(ctf::check_stream_specs({}), "at least one stream");
  EXPECT_THROWS_WITH(ctf::check_stream_specs({{"", 3, true}}), "must not be empty");
  EXPECT_THROWS_WITH(ctf::check_stream_specs({{"a b", 3, true}}), "must not contain blanks");
  EXPECT_THROWS_WITH(ctf::check_stream_specs({{"#a", 3, true}}), "must not start with `#`");
  EXPECT_THROWS_WITH(ctf::check_stream_specs({{"a", 3, true}, {"a", 2, false}}),
                     "is declared twice");
  EXPECT_THROWS_WITH(ctf::check_stream_specs({{"a", 0, true}}), "dim must be at least 1, got 0");
}

TEST_CASE("ctf missing file raises FileOpenError") {
  bool thrown = false;
  try {
    ctf::MappedFile file("/nonexistent/seqlstm/input.ctf");
  } catch (const ctf::FileOpenError& error) {
    thrown = true;
    EXPECT_EQ(error.error_number, ENOENT);
    EXPECT_TRUE(std::string(error.what()).rfind("/nonexistent/seqlstm/input.ctf: ", 0) == 0);
  }
  EXPECT_TRUE(thrown);
}

TEST_CASE("ctf quote escapes bytes that are not UTF-8") {
  const std::string token = "a\x80\xc3\xa9\t\xed\xa0\x80";
  EXPECT_EQ(seqlstm::reader::text::quote(token.data(), token.data() + token.size()),
            std::string("`a\\x80\xc3\xa9\\x09\\xed\\xa0\\x80`"));
}

TEST_CASE("ctf whole-chunk ranges parse as scanned sequences") {
  ctf::MappedFile file(test_data("../../seqlstm/data/Train.ctf"));
  const ctf::ParseResult scanned = parse_file(file);
  const ctf::FileIndex index = ctf::index_file(file, 10000);
  std::vector<int64_t> begins, ends, lines;
  for (const ctf::ChunkInfo& chunk : index.chunks) {
    begins.push_back(chunk.begin);
    ends.push_back(chunk.end);
    lines.push_back(chunk.first_line);
  }
  const ctf::ParseResult ranged =
      ctf::parse_sequences(file, true, streams, begins.data(), ends.data(), lines.data(),
                           static_cast<int64_t>(begins.size()), 0);
  EXPECT_EQ(ranged.id, scanned.id);
  EXPECT_EQ(ranged.first_line, scanned.first_line);
  EXPECT_EQ(ranged.num_lines, scanned.num_lines);
  EXPECT_EQ(ranged.streams[0].indices, scanned.streams[0].indices);
  EXPECT_EQ(ranged.streams[0].offsets, scanned.streams[0].offsets);
  EXPECT_EQ(ranged.streams[1].values, scanned.streams[1].values);
  EXPECT_EQ(ranged.position.back(), static_cast<int64_t>(index.chunks.size()) - 1);
}

TEST_CASE("ctf lenient mode resumes after a bad sequence in a range") {
  // One range with the bad line in the middle of sequence 1, followed by its
  // continuation lines, which must be skipped with it.
  const ctf::ParseResult result = parse_text(
      "0 |x 1:1 |y 1 0 0 0 0\n"
      "1 |x 2:1 |y 1 0 0 0 0\n"
      "1 |x 2000:1\n"
      "|x 5:1\n"
      "1 |x 6:1\n"
      "2 |x 3:1 |y 0 1 0 0 0\n"
      "2 |x 4:1\n",
      1);
  EXPECT_EQ(result.id, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(result.first_line, (std::vector<int64_t>{1, 6}));
  EXPECT_EQ(result.num_lines, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(result.streams[0].indices, (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(result.skipped.size(), size_t{1});
  EXPECT_TRUE(result.skipped[0].find(":3: stream `x`") != std::string::npos);
}
