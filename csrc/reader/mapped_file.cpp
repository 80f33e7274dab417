// Read-only memory map of a CTF file, so that parsing reads the page cache directly.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ctf_parser.h"

namespace seqlstm::reader {
namespace {

FileOpenError open_error(const std::string& path, const char* call, int error_number) {
  return FileOpenError(path + ": cannot read the file (" + call + " failed: " +
                           std::strerror(error_number) + ")",
                       error_number);
}

}  // namespace

// NOTE: a file that is truncated while it is mapped makes later reads of the lost pages
// fail with SIGBUS. The reader assumes that its input does not change while it is open.
MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) {
    throw open_error(path, "open", errno);
  }
  struct stat status {};
  if (::fstat(descriptor, &status) != 0) {
    const int error_number = errno;
    ::close(descriptor);
    throw open_error(path, "fstat", error_number);
  }
  if (S_ISDIR(status.st_mode)) {
    ::close(descriptor);
    throw open_error(path, "open", EISDIR);
  }
  size_ = static_cast<int64_t>(status.st_size);
  if (size_ > 0) {
    void* address = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE,
                           descriptor, 0);
    if (address == MAP_FAILED) {
      const int error_number = errno;
      ::close(descriptor);
      throw open_error(path, "mmap", error_number);
    }
    data_ = static_cast<const char*>(address);
  }
  // The mapping keeps the file open on its own.
  ::close(descriptor);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) {
    ::munmap(const_cast<char*>(data_), static_cast<size_t>(size_));
  }
}

void MappedFile::release(int64_t begin, int64_t end) const {
  const int64_t page = ::sysconf(_SC_PAGESIZE);
  begin = begin < 0 ? 0 : begin;
  end = end > size_ ? size_ : end;
  // madvise takes whole pages, so only pages fully inside the range are released.
  const int64_t first = (begin + page - 1) / page * page;
  const int64_t last = end == size_ ? size_ : end / page * page;
  if (data_ == nullptr || last <= first) {
    return;
  }
  // A clean page of a private read-only file mapping is dropped from the resident set
  // and read again from the page cache on the next access, so this cannot lose data.
  ::madvise(const_cast<char*>(data_) + first, static_cast<size_t>(last - first), MADV_DONTNEED);
}

}  // namespace seqlstm::reader
