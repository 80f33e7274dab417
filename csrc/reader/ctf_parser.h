// Parser of the CNTK Text Format (CTF), without Python, used by seqlstm/reader.py through
// bindings.cpp.
//
// A CTF line is `[sequence id] |name values |name values ...`. Consecutive lines with the
// same id form one sequence, and a line without an id continues the sequence above it.
// A file whose first line starts with `|` has no ids, and then each line is one sequence.
// Each line is one sample of the sequence and adds at most one sample to each stream named
// on it. The grammar and its errors follow CNTK's CNTKTextFormatReader (TextParser.cpp,
// Indexer.cpp), except where a comment at the check says otherwise.
//
// Reading happens in three steps, so that a file larger than memory can be read in a
// bounded window: index_file() finds chunk boundaries in one pass, scan_chunk() lists the
// sequences of one chunk, and parse_sequences() turns chosen sequences into stream data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace seqlstm::reader {

// Malformed input. The message starts with `path:line:` (1-based line) where a line is
// known. bindings.cpp turns it into ValueError.
class CtfError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file that cannot be opened or mapped. bindings.cpp turns it into OSError.
class FileOpenError : public std::runtime_error {
 public:
  FileOpenError(const std::string& message, int error_number)
      : std::runtime_error(message), error_number(error_number) {}
  int error_number;  // errno of the failed call
};

// One declared stream: its name in the file (`alias`), its dimension and its kind.
struct StreamSpec {
  std::string alias;
  int64_t dim = 0;
  bool sparse = false;
};

// A read-only memory map of a whole file. Pages are read on first access, so opening a
// file larger than memory is cheap; release() drops pages that are no longer needed
// from this process's resident set.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const char* data() const { return data_; }
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Advises the kernel that bytes [begin, end) will not be read soon. The mapping stays
  // valid, and a later read faults the pages in again.
  void release(int64_t begin, int64_t end) const;

 private:
  std::string path_;
  const char* data_ = nullptr;
  int64_t size_ = 0;
};

// A run of whole sequences, about chunk_size bytes long.
struct ChunkInfo {
  int64_t begin = 0;       // byte offset of its first line
  int64_t end = 0;         // byte offset one past its last line, newline included
  int64_t first_line = 0;  // 1-based line number of its first line
  int64_t num_sequences = 0;
  int64_t num_samples = 0;  // lines, the count that minibatch sizes are measured in
};

struct FileIndex {
  bool has_ids = true;      // false when the first line starts with `|`
  int64_t data_begin = 0;   // 3 after a UTF-8 byte order mark, else 0
  int64_t num_sequences = 0;
  int64_t num_samples = 0;
  std::vector<ChunkInfo> chunks;
};

// Finds the chunk boundaries in one pass over the file. A chunk ends at the first
// sequence boundary at or after chunk_size bytes, so no chunk splits a sequence and a
// chunk_size smaller than one sequence gives one sequence per chunk. Releases the pages
// it read. Throws CtfError for an empty file, a UTF-16 file, a first line that starts
// with neither a sequence id nor `|`, and a sequence id above 2^63 - 1.
FileIndex index_file(const MappedFile& file, int64_t chunk_size);

// The sequences of one chunk, in file order. Each vector has one entry per sequence.
struct SequenceTable {
  std::vector<int64_t> begin;       // byte offset of the first line
  std::vector<int64_t> end;         // byte offset one past the last line
  std::vector<int64_t> first_line;  // 1-based
  std::vector<int64_t> num_lines;   // the sequence's sample count
  std::vector<int64_t> id;          // the sequence id; without ids, the 0-based line index
};

// Lists the sequences in bytes [begin, end), which must start at a sequence boundary
// found by index_file() (a chunk, or several adjacent chunks) whose first line is
// first_line.
SequenceTable scan_chunk(const MappedFile& file, bool has_ids, int64_t begin, int64_t end,
                         int64_t first_line);

// Stream data of the parsed sequences, sequence-major: all samples of the first kept
// sequence, then those of the next.
struct StreamData {
  std::vector<int64_t> lengths;  // (num_sequences,) samples of this stream per sequence
  // Sparse streams: CSR over samples. offsets has one entry more than there are samples
  // and starts at 0; sample s has the entries [offsets[s], offsets[s + 1]).
  std::vector<int64_t> indices;  // (nnz,)
  std::vector<int64_t> offsets;  // (samples + 1,)
  // Sparse streams: (nnz,) values. Dense streams: (samples, dim) row-major, zero-filled
  // where a sample lists fewer than dim values.
  std::vector<float> values;
};

struct ParseResult {
  std::vector<int64_t> position;    // (num_sequences,) index of the range of each kept sequence
  std::vector<int64_t> id;          // (num_sequences,)
  std::vector<int64_t> first_line;  // (num_sequences,)
  std::vector<int64_t> num_lines;   // (num_sequences,)
  std::vector<StreamData> streams;  // one per declared stream, in declaration order
  // `path:line:` messages of zero-filled dense samples; at most max_warning_messages,
  // while num_warnings counts them all.
  std::vector<std::string> warnings;
  int64_t num_warnings = 0;
  // `path:line:` messages of the malformed sequences that were skipped.
  std::vector<std::string> skipped;
};

inline constexpr size_t max_warning_messages = 100;

// Parses the byte ranges [begins[k], ends[k]) whose first line is first_lines[k], for
// k < count. Each range starts at a sequence boundary and holds one or more whole
// sequences: one sequence of scan_chunk(), or a whole chunk of index_file(). A malformed
// sequence is skipped and its message stored in `skipped` while fewer than max_skipped
// sequences were skipped in this call; past that, or with max_skipped = 0, its error is
// thrown as CtfError. A declared stream with no sample in a sequence always throws,
// whatever max_skipped is, as in CNTK.
ParseResult parse_sequences(const MappedFile& file, bool has_ids,
                            const std::vector<StreamSpec>& streams, const int64_t* begins,
                            const int64_t* ends, const int64_t* first_lines, int64_t count,
                            int64_t max_skipped);

// Checks the declared streams: aliases non-empty, unique and free of blanks, `|`, `#` at
// the start and control characters; dimensions at least 1. Throws std::invalid_argument
// naming the stream.
void check_stream_specs(const std::vector<StreamSpec>& streams);

}  // namespace seqlstm::reader
