// Indexing of a CTF file: the chunk boundaries of the whole file, and the sequences of
// one chunk. Both group lines into sequences the way CNTK's Indexer does: a line whose
// leading id differs from the previous id starts a sequence, a line without leading
// digits continues it, and without ids every line is a sequence.
#include <string>

#include "ctf_parser.h"
#include "ctf_text.h"

namespace seqlstm::reader {
namespace {

CtfError line_error(const std::string& path, int64_t line, const std::string& message) {
  return CtfError(path + ":" + std::to_string(line) + ": " + message);
}

// Checks the start of the file and returns the offset of the first line, after a UTF-8
// byte order mark if there is one.
int64_t check_file_start(const MappedFile& file, bool* has_ids) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(file.data());
  const int64_t size = file.size();
  const std::string& path = file.path();
  if (size >= 2 && ((bytes[0] == 0xff && bytes[1] == 0xfe) ||
                    (bytes[0] == 0xfe && bytes[1] == 0xff))) {
    throw line_error(path, 1,
                     "the file is UTF-16 encoded (it starts with a UTF-16 byte order mark), but "
                     "CTF files must be UTF-8 or ASCII. Convert it, for example with "
                     "`iconv -f UTF-16 -t UTF-8`");
  }
  int64_t begin = 0;
  if (size >= 3 && bytes[0] == 0xef && bytes[1] == 0xbb && bytes[2] == 0xbf) {
    begin = 3;
  }
  if (begin == size) {
    throw line_error(path, 1, "the file is empty, so it contains no sequences");
  }
  if (size - begin >= 2 && (bytes[begin] == 0 || bytes[begin + 1] == 0)) {
    throw line_error(path, 1,
                     "the file starts with a NUL byte, as UTF-16 text without a byte order "
                     "mark does, but CTF files must be UTF-8 or ASCII");
  }
  const char first = file.data()[begin];
  if (first == text::name_prefix) {
    *has_ids = false;
  } else if (text::is_digit(first)) {
    *has_ids = true;
  } else {
    throw line_error(path, 1,
                     "expected a sequence id (decimal digits) or `|` at the start of the "
                     "first line, found " +
                         text::quote(file.data() + begin, file.data() + begin + 1));
  }
  return begin;
}

// Walks the lines of [begin, end) and calls on_sequence(begin, end, first_line,
// num_lines, id) for each sequence, in file order.
template <typename OnSequence>
void for_each_sequence(const MappedFile& file, bool has_ids, int64_t begin, int64_t end,
                       int64_t first_line, OnSequence&& on_sequence) {
  const char* data = file.data();
  const char* p = data + begin;
  const char* stop = data + end;
  int64_t line = first_line;

  bool open = false;
  int64_t sequence_begin = begin;
  int64_t sequence_line = first_line;
  int64_t sequence_lines = 0;
  int64_t sequence_id = 0;
  while (p < stop) {
    const char* line_end = text::find_line_end(p, stop);
    int64_t id = line - 1;
    bool starts_sequence = true;
    if (has_ids) {
      const char* after = nullptr;
      const text::IdStatus status = text::read_sequence_id(p, line_end, &id, &after);
      if (status == text::IdStatus::too_large) {
        throw line_error(file.path(), line,
                         "sequence id " + text::quote(p, after) +
                             " is too large, the maximum is 9223372036854775807");
      }
      starts_sequence = !open || (status == text::IdStatus::ok && id != sequence_id);
    }
    if (starts_sequence) {
      if (open) {
        on_sequence(sequence_begin, p - data, sequence_line, sequence_lines, sequence_id);
      }
      open = true;
      sequence_begin = p - data;
      sequence_line = line;
      sequence_lines = 0;
      sequence_id = id;
    }
    ++sequence_lines;
    ++line;
    p = line_end < stop ? line_end + 1 : stop;
  }
  if (open) {
    on_sequence(sequence_begin, end, sequence_line, sequence_lines, sequence_id);
  }
}

}  // namespace

FileIndex index_file(const MappedFile& file, int64_t chunk_size) {
  if (chunk_size < 1) {
    throw std::invalid_argument("chunk_size must be at least 1 byte, got " +
                                std::to_string(chunk_size));
  }
  if (file.size() == 0) {
    throw line_error(file.path(), 1, "the file is empty, so it contains no sequences");
  }
  FileIndex index;
  index.data_begin = check_file_start(file, &index.has_ids);

  ChunkInfo chunk;
  chunk.begin = index.data_begin;
  chunk.first_line = 1;
  auto close_chunk = [&](int64_t end) {
    chunk.end = end;
    index.chunks.push_back(chunk);
    file.release(chunk.begin, chunk.end);
  };
  for_each_sequence(file, index.has_ids, index.data_begin, file.size(), 1,
                    [&](int64_t begin, int64_t end, int64_t first_line, int64_t num_lines,
                        int64_t /*id*/) {
                      if (chunk.num_sequences > 0 && begin - chunk.begin >= chunk_size) {
                        close_chunk(begin);
                        chunk = ChunkInfo{begin, 0, first_line, 0, 0};
                      }
                      ++chunk.num_sequences;
                      chunk.num_samples += num_lines;
                      ++index.num_sequences;
                      index.num_samples += num_lines;
                      (void)end;
                    });
  close_chunk(file.size());
  return index;
}

SequenceTable scan_chunk(const MappedFile& file, bool has_ids, int64_t begin, int64_t end,
                         int64_t first_line) {
  if (begin < 0 || end > file.size() || begin > end || first_line < 1) {
    throw std::invalid_argument("scan_chunk: invalid range [" + std::to_string(begin) + ", " +
                                std::to_string(end) + ") at line " +
                                std::to_string(first_line) + " of a file of " +
                                std::to_string(file.size()) + " bytes");
  }
  SequenceTable table;
  for_each_sequence(file, has_ids, begin, end, first_line,
                    [&](int64_t sequence_begin, int64_t sequence_end, int64_t line,
                        int64_t num_lines, int64_t id) {
                      table.begin.push_back(sequence_begin);
                      table.end.push_back(sequence_end);
                      table.first_line.push_back(line);
                      table.num_lines.push_back(num_lines);
                      table.id.push_back(id);
                    });
  return table;
}

}  // namespace seqlstm::reader
