// CTF parser: turns the byte ranges of whole sequences into per-stream dense values or
// sparse CSR data. Errors name `path:line:`, the stream and the offending text.
#include "ctf_parser.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <string>
#include <system_error>
#include <unordered_set>

#include "ctf_text.h"

namespace seqlstm::reader {
namespace {

// A malformed sequence, which max_skipped may allow to skip.
struct SequenceError {
  int64_t line;
  std::string message;
};

enum class NumberStatus { ok, invalid, out_of_range };

// Parses [begin, end) as `[+-]? digit+ ('.' digit*)? ([eE] [+-]? digit+)?`, CNTK's number
// grammar, so `.5`, `1e`, `inf`, `nan` and `0x10` are invalid although strtod takes them.
// std::from_chars rounds correctly. CNTK instead accumulates the digits in double and
// casts the result to float, so the two can differ in the last bit of a float.
NumberStatus parse_number(const char* begin, const char* end, float* value) {
  const char* p = begin;
  if (p < end && (*p == '+' || *p == '-')) {
    ++p;
  }
  const char* integer_begin = p;
  while (p < end && text::is_digit(*p)) {
    ++p;
  }
  const int64_t integer_digits = p - integer_begin;
  if (integer_digits == 0) {
    return NumberStatus::invalid;
  }
  bool is_integer = true;
  if (p < end && *p == '.') {
    is_integer = false;
    ++p;
    while (p < end && text::is_digit(*p)) {
      ++p;
    }
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    is_integer = false;
    ++p;
    if (p < end && (*p == '+' || *p == '-')) {
      ++p;
    }
    const char* exponent_begin = p;
    while (p < end && text::is_digit(*p)) {
      ++p;
    }
    if (p == exponent_begin) {
      return NumberStatus::invalid;
    }
  }
  if (p != end) {
    return NumberStatus::invalid;
  }

  // Integers below 2^24 are exact in float; most CTF values (one-hot labels, counts)
  // take this path.
  if (is_integer && integer_digits <= 7) {
    int32_t magnitude = 0;
    for (const char* digit = integer_begin; digit < end; ++digit) {
      magnitude = magnitude * 10 + (*digit - '0');
    }
    *value = static_cast<float>(*begin == '-' ? -magnitude : magnitude);
    return NumberStatus::ok;
  }
  // from_chars rejects a leading '+'.
  const char* number_begin = *begin == '+' ? begin + 1 : begin;
  const auto [float_end, float_error] = std::from_chars(number_begin, end, *value);
  if (float_error == std::errc() && float_end == end) {
    return NumberStatus::ok;
  }
  // Out of float range: a value that is too small rounds to a float zero or subnormal, as
  // CNTK's cast from double does, and a value above the float maximum is an error.
  double wide = 0.0;
  const auto [double_end, double_error] = std::from_chars(number_begin, end, wide);
  if (double_error != std::errc() || double_end != end) {
    return NumberStatus::out_of_range;
  }
  *value = static_cast<float>(wide);
  return std::isfinite(*value) ? NumberStatus::ok : NumberStatus::out_of_range;
}

// Returns the end of the run of 1 to 7 digits at p if a token ends there, else nullptr.
// Such a value is exact in float, and it is the common case of labels and counts.
const char* read_simple_integer(const char* p, const char* line_end) {
  const char* q = p;
  while (q < line_end && text::is_digit(*q) && q - p < 7) {
    ++q;
  }
  if (q == p || (q < line_end && !text::ends_token(*q))) {
    return nullptr;
  }
  return q;
}

int32_t simple_integer_value(const char* begin, const char* end) {
  int32_t value = 0;
  for (const char* p = begin; p < end; ++p) {
    value = value * 10 + (*p - '0');
  }
  return value;
}

const char* skip_value_delimiters(const char* p, const char* line_end) {
  while (p < line_end && text::is_value_delimiter(*p)) {
    ++p;
  }
  return p;
}

const char* find_token_end(const char* p, const char* line_end) {
  while (p < line_end && !text::ends_token(*p)) {
    ++p;
  }
  return p;
}

// Returns the position of the next `|` in [p, line_end), or line_end.
const char* find_name_prefix(const char* p, const char* line_end) {
  const void* prefix = std::memchr(p, text::name_prefix, static_cast<size_t>(line_end - p));
  return prefix ? static_cast<const char*>(prefix) : line_end;
}

class SequenceParser {
 public:
  SequenceParser(const MappedFile& file, bool has_ids, const std::vector<StreamSpec>& streams,
                 ParseResult& result)
      : file_(file),
        has_ids_(has_ids),
        streams_(streams),
        result_(result),
        samples_in_sequence_(streams.size()),
        last_line_(streams.size()),
        sizes_before_(streams.size()) {
    result_.streams.resize(streams.size());
    for (size_t s = 0; s < streams.size(); ++s) {
      if (streams[s].sparse) {
        result_.streams[s].offsets.push_back(0);
      }
    }
  }

  // Parses the sequence whose first line starts at p, appends it to the result, and
  // moves p and line past its last line. Throws SequenceError for a malformed sequence,
  // after removing what it had appended and moving past it, and CtfError for a declared
  // stream without samples.
  void parse(const char*& p, const char* stop, int64_t& line, int64_t position) {
    const size_t warnings_before = result_.warnings.size();
    const int64_t num_warnings_before = result_.num_warnings;
    for (size_t s = 0; s < streams_.size(); ++s) {
      const StreamData& data = result_.streams[s];
      sizes_before_[s] = {data.indices.size(), data.offsets.size(), data.values.size()};
      samples_in_sequence_[s] = 0;
      last_line_[s] = 0;
    }

    const int64_t first_line = line;
    int64_t id = first_line - 1;
    if (has_ids_) {
      const char* after = nullptr;
      text::read_sequence_id(p, stop, &id, &after);
    }
    const char* next_line = p;
    try {
      do {
        const char* line_end = text::find_line_end(p, stop);
        next_line = line_end < stop ? line_end + 1 : stop;
        parse_line(p, line_end, line, id);
        ++line;
        p = next_line;
      } while (p < stop && !starts_sequence(p, stop, id));
      check_sequence(first_line, line - first_line, id);
    } catch (const SequenceError&) {
      for (size_t s = 0; s < streams_.size(); ++s) {
        StreamData& data = result_.streams[s];
        data.indices.resize(sizes_before_[s].indices);
        data.offsets.resize(sizes_before_[s].offsets);
        data.values.resize(sizes_before_[s].values);
      }
      result_.warnings.resize(warnings_before);
      result_.num_warnings = num_warnings_before;
      skip_rest_of_sequence(p, next_line, stop, line, id);
      throw;
    }

    for (size_t s = 0; s < streams_.size(); ++s) {
      result_.streams[s].lengths.push_back(samples_in_sequence_[s]);
    }
    result_.position.push_back(position);
    result_.id.push_back(id);
    result_.first_line.push_back(first_line);
    result_.num_lines.push_back(line - first_line);
  }

 private:
  struct Sizes {
    size_t indices = 0;
    size_t offsets = 0;
    size_t values = 0;
  };

  [[noreturn]] void fail(int64_t line, const std::string& message) const {
    throw SequenceError{line, message};
  }

  std::string location(int64_t line) const {
    return file_.path() + ":" + std::to_string(line) + ": ";
  }

  // Returns whether the line at p starts a new sequence after the sequence `id`.
  bool starts_sequence(const char* p, const char* stop, int64_t id) const {
    if (!has_ids_) {
      return true;
    }
    int64_t next_id = 0;
    const char* after = nullptr;
    const text::IdStatus status = text::read_sequence_id(p, stop, &next_id, &after);
    return status == text::IdStatus::too_large ||
           (status == text::IdStatus::ok && next_id != id);
  }

  // Moves p and line to the start of the next sequence after an error. p is either at
  // the failed line, which ends before next_line, or already past the last line.
  void skip_rest_of_sequence(const char*& p, const char* next_line, const char* stop,
                             int64_t& line, int64_t id) const {
    if (p < next_line) {
      p = next_line;
      ++line;
    }
    while (p < stop && !starts_sequence(p, stop, id)) {
      const char* line_end = text::find_line_end(p, stop);
      p = line_end < stop ? line_end + 1 : stop;
      ++line;
    }
  }

  std::string stream_name(size_t s) const { return "stream `" + streams_[s].alias + "`"; }

  // Returns the declared stream whose alias is [begin, end), or -1.
  int64_t find_stream(const char* begin, const char* end) const {
    const size_t length = static_cast<size_t>(end - begin);
    for (size_t s = 0; s < streams_.size(); ++s) {
      const std::string& alias = streams_[s].alias;
      if (alias.size() == length && alias[0] == *begin &&
          std::memcmp(alias.data(), begin, length) == 0) {
        return static_cast<int64_t>(s);
      }
    }
    return -1;
  }

  // Reads `[id] (delimiters* sample)*` up to line_end, as CNTK's TextParser::TryReadRow.
  void parse_line(const char* p, const char* line_end, int64_t line, int64_t id) {
    while (p < line_end && text::is_digit(*p)) {
      ++p;
    }
    int64_t samples_on_line = 0;
    while (true) {
      while (p < line_end && text::is_column_delimiter(*p)) {
        ++p;
      }
      if (p == line_end) {
        break;
      }
      if (*p != text::name_prefix) {
        std::string message = "expected `|` and a stream name, found " +
                              text::quote(p, find_token_end(p, line_end));
        if (text::is_digit(*p) && samples_on_line == 0) {
          message += ". A sequence id must start at the first column, with no blanks before it";
        }
        fail(line, message);
      }
      ++p;
      if (p == line_end || text::is_column_delimiter(*p)) {
        fail(line, "`|` must be followed by a stream name, found " +
                       (p == line_end ? std::string("the end of the line")
                                      : text::quote(p, p + 1)));
      }
      if (*p == text::comment_mark) {
        // A comment runs to the next `|` or the end of the line.
        p = find_name_prefix(p, line_end);
        continue;
      }
      const char* name_begin = p;
      while (p < line_end && !text::ends_token(*p)) {
        ++p;
      }
      const int64_t stream = find_stream(name_begin, p);
      if (stream < 0) {
        // CNTK skips streams that were not declared, with their values.
        p = find_name_prefix(p, line_end);
        continue;
      }
      const size_t s = static_cast<size_t>(stream);
      if (last_line_[s] == line) {
        fail(line, stream_name(s) +
                       " appears more than once on this line, but a line can hold only one "
                       "sample of each stream");
      }
      last_line_[s] = line;
      p = streams_[s].sparse ? parse_sparse_sample(p, line_end, line, s)
                             : parse_dense_sample(p, line_end, line, s);
      ++samples_in_sequence_[s];
      ++samples_on_line;
    }
    if (samples_on_line == 0) {
      const std::string owner =
          has_ids_ ? "this line of sequence id " + std::to_string(id) : std::string("this line");
      fail(line, owner + " has no sample of a declared stream. Expected `|name values` "
                         "with one of the declared stream names");
    }
  }

  const char* parse_dense_sample(const char* p, const char* line_end, int64_t line, size_t s) {
    const int64_t dim = streams_[s].dim;
    std::vector<float>& values = result_.streams[s].values;
    const size_t base = values.size();
    values.resize(base + static_cast<size_t>(dim), 0.0f);
    int64_t count = 0;
    while (true) {
      p = skip_value_delimiters(p, line_end);
      if (p == line_end || text::ends_value_list(*p)) {
        break;
      }
      const char* token_end = read_simple_integer(p, line_end);
      float value = 0.0f;
      NumberStatus status = NumberStatus::ok;
      if (token_end != nullptr) {
        value = static_cast<float>(simple_integer_value(p, token_end));
      } else {
        token_end = find_token_end(p, line_end);
        status = parse_number(p, token_end, &value);
      }
      if (status != NumberStatus::ok) {
        fail(line, stream_name(s) + ": " + number_problem(status) + " " +
                       text::quote(p, token_end) +
                       (status == NumberStatus::invalid
                            ? ". Expected a decimal number such as 1, -0.5 or 2e-3"
                            : ""));
      }
      if (count < dim) {
        values[base + static_cast<size_t>(count)] = value;
      }
      ++count;
      p = token_end;
    }
    if (count > dim) {
      fail(line, stream_name(s) + " has " + std::to_string(count) +
                     " values, but its dimension is " + std::to_string(dim));
    }
    if (count < dim) {
      // CNTK reads a short dense sample as a "sparse suffix" and zero-fills it.
      ++result_.num_warnings;
      if (result_.warnings.size() < max_warning_messages) {
        result_.warnings.push_back(location(line) + stream_name(s) + " has " +
                                   std::to_string(count) + " of " + std::to_string(dim) +
                                   " values, so the missing values are set to 0");
      }
    }
    return p;
  }

  const char* parse_sparse_sample(const char* p, const char* line_end, int64_t line, size_t s) {
    StreamData& data = result_.streams[s];
    while (true) {
      p = skip_value_delimiters(p, line_end);
      if (p == line_end || text::ends_value_list(*p)) {
        break;
      }
      if (const char* pair_end = read_simple_pair(p, line_end, s); pair_end != nullptr) {
        p = pair_end;
        continue;
      }
      const char* token_end = find_token_end(p, line_end);
      const char* colon = static_cast<const char*>(
          std::memchr(p, text::index_delimiter, static_cast<size_t>(token_end - p)));
      if (colon == nullptr) {
        fail(line, stream_name(s) + " is sparse and expects index:value pairs, got " +
                       text::quote(p, token_end));
      }
      const int64_t index = parse_index(p, colon, token_end, line, s);
      float value = 0.0f;
      const NumberStatus status = parse_number(colon + 1, token_end, &value);
      if (status != NumberStatus::ok) {
        fail(line, stream_name(s) + ": " + number_problem(status) + " " +
                       text::quote(colon + 1, token_end) + " in " + text::quote(p, token_end) +
                       ". Expected index:value, such as 17:1 or 3:-0.5");
      }
      data.indices.push_back(index);
      data.values.push_back(value);
      p = token_end;
    }
    data.offsets.push_back(static_cast<int64_t>(data.indices.size()));
    return p;
  }

  // Reads a pair of the common form `digits:digits`, with an index below dim and a
  // value below 10^7, which is exact in float, and returns the end of the pair. Returns
  // nullptr for any other form, which the general path then reads or reports.
  const char* read_simple_pair(const char* p, const char* line_end, size_t s) {
    const char* q = p;
    uint64_t index = 0;
    while (q < line_end && text::is_digit(*q) && q - p < 18) {
      index = index * 10 + static_cast<uint64_t>(*q - '0');
      ++q;
    }
    if (q == p || q == line_end || *q != text::index_delimiter ||
        index >= static_cast<uint64_t>(streams_[s].dim)) {
      return nullptr;
    }
    const char* value_begin = q + 1;
    const char* value_end = read_simple_integer(value_begin, line_end);
    if (value_end == nullptr) {
      return nullptr;
    }
    StreamData& data = result_.streams[s];
    data.indices.push_back(static_cast<int64_t>(index));
    data.values.push_back(static_cast<float>(simple_integer_value(value_begin, value_end)));
    return value_end;
  }

  // Reads the index of the pair [begin, token_end) whose ':' is at `colon`.
  int64_t parse_index(const char* begin, const char* colon, const char* token_end, int64_t line,
                      size_t s) const {
    const int64_t dim = streams_[s].dim;
    const std::string valid_range =
        ". Valid indices are 0 to " + std::to_string(dim - 1) + " (dimension " +
        std::to_string(dim) + ")";
    const char* p = begin;
    const bool negative = p < colon && *p == '-';
    p += negative ? 1 : 0;
    const char* digits_begin = p;
    uint64_t index = 0;
    bool too_large = false;
    while (p < colon && text::is_digit(*p)) {
      index = index * 10 + static_cast<uint64_t>(*p - '0');
      too_large = too_large || index >= static_cast<uint64_t>(dim);
      ++p;
    }
    if (p != colon || p == digits_begin) {
      fail(line, stream_name(s) + ": invalid sparse index " + text::quote(begin, colon) +
                     " in " + text::quote(begin, token_end) +
                     ". Expected a non-negative integer before the `:`");
    }
    if (negative) {
      fail(line, stream_name(s) + ": sparse index " + std::string(begin, colon) +
                     " is negative" + valid_range);
    }
    if (too_large) {
      fail(line, stream_name(s) + ": sparse index " + std::string(digits_begin, colon) +
                     " is out of range" + valid_range);
    }
    return static_cast<int64_t>(index);
  }

  static std::string number_problem(NumberStatus status) {
    return status == NumberStatus::invalid ? "invalid number" : "number out of float32 range";
  }

  // Checks a whole sequence as CNTK's LoadSequence does.
  void check_sequence(int64_t first_line, int64_t num_lines, int64_t id) const {
    const std::string owner =
        has_ids_ ? "sequence id " + std::to_string(id) : std::string("the sequence on this line");
    int64_t longest = 0;
    for (size_t s = 0; s < streams_.size(); ++s) {
      if (samples_in_sequence_[s] == 0) {
        // Fatal in CNTK too, whatever maxErrors allows.
        throw CtfError(location(first_line) + owner + " has no sample of " + stream_name(s) +
                       ". Every declared stream needs at least one sample in each sequence");
      }
      longest = std::max(longest, samples_in_sequence_[s]);
    }
    if (longest < num_lines) {
      fail(first_line, owner + " has " + std::to_string(num_lines) +
                           " lines, but no stream has a sample on each of them (the longest "
                           "stream has " +
                           std::to_string(longest) + " samples)");
    }
  }

  const MappedFile& file_;
  bool has_ids_;
  const std::vector<StreamSpec>& streams_;
  ParseResult& result_;
  std::vector<int64_t> samples_in_sequence_;  // (streams,) in the current sequence
  std::vector<int64_t> last_line_;            // (streams,) line of the latest sample
  std::vector<Sizes> sizes_before_;           // (streams,) output sizes before the sequence
};

}  // namespace

void check_stream_specs(const std::vector<StreamSpec>& streams) {
  if (streams.empty()) {
    throw std::invalid_argument("streams must declare at least one stream, got none");
  }
  std::unordered_set<std::string> aliases;
  for (const StreamSpec& stream : streams) {
    const std::string name = "stream alias " + text::quote(stream.alias.data(),
                                                           stream.alias.data() + stream.alias.size());
    if (stream.alias.empty()) {
      throw std::invalid_argument("stream alias must not be empty");
    }
    for (char c : stream.alias) {
      if (text::ends_token(c)) {
        throw std::invalid_argument(name + " must not contain blanks, `|` or control characters");
      }
    }
    if (stream.alias[0] == text::comment_mark) {
      throw std::invalid_argument(name + " must not start with `#`, which starts a comment");
    }
    if (!aliases.insert(stream.alias).second) {
      throw std::invalid_argument(name + " is declared twice");
    }
    if (stream.dim < 1) {
      throw std::invalid_argument(name + ": dim must be at least 1, got " +
                                  std::to_string(stream.dim));
    }
  }
}

ParseResult parse_sequences(const MappedFile& file, bool has_ids,
                            const std::vector<StreamSpec>& streams, const int64_t* begins,
                            const int64_t* ends, const int64_t* first_lines, int64_t count,
                            int64_t max_skipped) {
  check_stream_specs(streams);
  for (int64_t k = 0; k < count; ++k) {
    if (begins[k] < 0 || ends[k] > file.size() || begins[k] > ends[k] || first_lines[k] < 1) {
      throw std::invalid_argument(
          "sequence " + std::to_string(k) + ": invalid range [" + std::to_string(begins[k]) +
          ", " + std::to_string(ends[k]) + ") at line " + std::to_string(first_lines[k]) +
          " of a file of " + std::to_string(file.size()) + " bytes");
    }
  }

  ParseResult result;
  int64_t total_bytes = 0;
  for (int64_t k = 0; k < count; ++k) {
    total_bytes += ends[k] - begins[k];
  }
  result.position.reserve(static_cast<size_t>(count));
  result.id.reserve(static_cast<size_t>(count));
  result.first_line.reserve(static_cast<size_t>(count));
  result.num_lines.reserve(static_cast<size_t>(count));
  result.streams.resize(streams.size());
  for (size_t s = 0; s < streams.size(); ++s) {
    // A guess that saves most reallocations for text like `|x 17:1` and costs little
    // otherwise: glibc serves large allocations with mmap, and reserved pages that are
    // never written take no memory.
    result.streams[s].lengths.reserve(static_cast<size_t>(count));
    if (streams[s].sparse) {
      result.streams[s].indices.reserve(static_cast<size_t>(total_bytes / 8));
      result.streams[s].values.reserve(static_cast<size_t>(total_bytes / 8));
      result.streams[s].offsets.reserve(static_cast<size_t>(total_bytes / 8));
    }
  }
  SequenceParser parser(file, has_ids, streams, result);
  for (int64_t k = 0; k < count; ++k) {
    const char* p = file.data() + begins[k];
    const char* stop = file.data() + ends[k];
    int64_t line = first_lines[k];
    while (p < stop) {
      try {
        parser.parse(p, stop, line, k);
      } catch (const SequenceError& error) {
        const std::string message =
            file.path() + ":" + std::to_string(error.line) + ": " + error.message;
        if (static_cast<int64_t>(result.skipped.size()) >= max_skipped) {
          throw CtfError(message);
        }
        result.skipped.push_back(message);
      }
    }
  }
  return result;
}

}  // namespace seqlstm::reader
