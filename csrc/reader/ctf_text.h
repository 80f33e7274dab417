// Character classes and line helpers shared by the CTF indexer and parser.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace seqlstm::reader::text {

inline constexpr char name_prefix = '|';
inline constexpr char comment_mark = '#';
inline constexpr char index_delimiter = ':';

// CNTK skips spaces, tabs and every other control character except the newline between
// samples, so a `\r` of a CRLF line end is skipped like a blank.
inline bool is_column_delimiter(char c) {
  return c == ' ' || static_cast<unsigned char>(c) < 0x20;
}

// Separates the values of one sample.
inline bool is_value_delimiter(char c) { return c == ' ' || c == '\t'; }

// Ends a value list, as in CNTK: the next sample's `|` or any control character.
inline bool ends_value_list(char c) {
  return c == name_prefix || (static_cast<unsigned char>(c) < 0x20 && c != '\t');
}

// Ends a stream name or a value token.
inline bool ends_token(char c) {
  return c == ' ' || c == name_prefix || static_cast<unsigned char>(c) < 0x20;
}

inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Returns the end of the line that starts at `p`, excluding its '\n'.
inline const char* find_line_end(const char* p, const char* end) {
  const void* newline = std::memchr(p, '\n', static_cast<size_t>(end - p));
  return newline ? static_cast<const char*>(newline) : end;
}

enum class IdStatus { none, ok, too_large };

// Reads the sequence id, the run of decimal digits at the very start of a line, into *id
// and sets *after to the first byte after it.
inline IdStatus read_sequence_id(const char* p, const char* line_end, int64_t* id,
                                 const char** after) {
  const char* start = p;
  uint64_t value = 0;
  bool too_large = false;
  while (p < line_end && is_digit(*p)) {
    const uint64_t digit = static_cast<uint64_t>(*p - '0');
    if (value > (static_cast<uint64_t>(INT64_MAX) - digit) / 10) {
      too_large = true;
    } else {
      value = value * 10 + digit;
    }
    ++p;
  }
  *after = p;
  if (p == start) {
    return IdStatus::none;
  }
  *id = static_cast<int64_t>(value);
  return too_large ? IdStatus::too_large : IdStatus::ok;
}

// Quotes up to 40 bytes of a token for an error message, with control bytes escaped.
inline std::string quote(const char* begin, const char* end) {
  std::string text = "`";
  const char* stop = end - begin > 40 ? begin + 40 : end;
  for (const char* p = begin; p < stop; ++p) {
    const unsigned char c = static_cast<unsigned char>(*p);
    if (c < 0x20 || c == 0x7f) {
      static const char hex[] = "0123456789abcdef";
      text += "\\x";
      text += hex[c >> 4];
      text += hex[c & 15];
    } else {
      text += static_cast<char>(c);
    }
  }
  return text + (stop < end ? "...`" : "`");
}

}  // namespace seqlstm::reader::text
