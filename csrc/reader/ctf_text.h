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

// Returns the length of the valid UTF-8 character at [p, end), or 0 if the bytes there
// are not valid UTF-8 (the byte ranges of Unicode's table 3-7, which Python's decoder
// enforces too).
inline int utf8_length(const unsigned char* p, const unsigned char* end) {
  const unsigned char lead = p[0];
  int length = 0;
  unsigned char low = 0x80;
  unsigned char high = 0xbf;
  if (lead < 0x80) {
    return 1;
  } else if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    low = lead == 0xe0 ? 0xa0 : 0x80;
    high = lead == 0xed ? 0x9f : 0xbf;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    low = lead == 0xf0 ? 0x90 : 0x80;
    high = lead == 0xf4 ? 0x8f : 0xbf;
  } else {
    return 0;
  }
  if (end - p < length || p[1] < low || p[1] > high) {
    return 0;
  }
  for (int k = 2; k < length; ++k) {
    if (p[k] < 0x80 || p[k] > 0xbf) {
      return 0;
    }
  }
  return length;
}

// Quotes up to 40 bytes of a token for an error message. Control bytes and bytes that
// are not valid UTF-8 are written as \xNN, so that the message is valid UTF-8.
inline std::string quote(const char* begin, const char* end) {
  static const char hex[] = "0123456789abcdef";
  std::string text = "`";
  const auto* p = reinterpret_cast<const unsigned char*>(begin);
  const auto* stop = reinterpret_cast<const unsigned char*>(end - begin > 40 ? begin + 40 : end);
  while (p < stop) {
    const int length = utf8_length(p, stop);
    if (length == 0 || *p < 0x20 || *p == 0x7f) {
      text += "\\x";
      text += hex[*p >> 4];
      text += hex[*p & 15];
      ++p;
    } else {
      text.append(reinterpret_cast<const char*>(p), static_cast<size_t>(length));
      p += length;
    }
  }
  return text + (reinterpret_cast<const char*>(stop) < end ? "...`" : "`");
}

}  // namespace seqlstm::reader::text
