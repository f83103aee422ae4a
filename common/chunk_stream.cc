#include "common/chunk_stream.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace quant {

absl::Status SendTensor(
    const v1::TensorInfo& info, const uint8_t* data, uint64_t offset,
    size_t chunk_bytes, const std::function<bool(const v1::Chunk&)>& emit,
    const std::function<void(size_t)>& sent,
    const std::function<void(uint64_t from, uint64_t to)>& done_with,
    absl::string_view digest) {
  const uint64_t size = info.size_bytes();
  if (offset > size) {
    return absl::OutOfRangeError(absl::StrCat(info.name(), ": offset ", offset,
                                              " past its ", size, " bytes"));
  }
  if (chunk_bytes == 0) {
    return absl::InvalidArgumentError("chunks of zero bytes");
  }
  const bool hashing = digest.empty();
  ContentDigest hash;
  // A resumed stream still hashes every byte: the prefix a window at a
  // time, each handed back once hashed.
  uint64_t done_to = 0;  // Bytes hashed (and emitted) and handed back.
  while (done_to < offset) {
    const uint64_t n = std::min<uint64_t>(kSendReleaseBytes, offset - done_to);
    if (hashing) hash.Update(data + done_to, n);
    if (done_with) done_with(done_to, done_to + n);
    done_to += n;
  }
  v1::Chunk chunk;
  do {
    const size_t n =
        static_cast<size_t>(std::min<uint64_t>(chunk_bytes, size - offset));
    chunk.Clear();
    if (offset == 0) *chunk.mutable_info() = info;
    chunk.set_tensor(info.name());
    chunk.set_offset(offset);
    chunk.set_data(data + offset, n);
    chunk.set_crc32c(Crc32c(data + offset, n));
    if (hashing) hash.Update(data + offset, n);
    offset += n;
    if (offset == size) {
      chunk.set_last(true);
      chunk.set_digest(hashing ? hash.Finish() : std::string(digest));
    }
    if (!emit(chunk)) {
      return absl::CancelledError(
          absl::StrCat("the receiver of ", info.name(), " went away"));
    }
    if (sent) sent(n);
    if (done_with &&
        (offset - done_to >= kSendReleaseBytes || offset == size)) {
      done_with(done_to, offset);
      done_to = offset;
    }
  } while (offset < size);
  return absl::OkStatus();
}

absl::Status SendStripe(const std::vector<StripedTensor>& tensors, int index,
                        int count, uint64_t unit_bytes, size_t chunk_bytes,
                        const std::function<bool(const v1::Chunk&)>& emit,
                        const std::function<void(size_t)>& sent,
                        const std::function<void(size_t tensor, uint64_t from,
                                                 uint64_t to)>& done_with) {
  if (count < 1 || index < 0 || index >= count || unit_bytes == 0 ||
      chunk_bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("stream ", index, " of ", count, " in units of ",
                     unit_bytes, " bytes, chunks of ", chunk_bytes));
  }
  v1::Chunk chunk;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const StripedTensor& tensor = tensors[t];
    for (uint64_t from = index * unit_bytes; from < tensor.size;
         from += count * unit_bytes) {
      const uint64_t to = std::min(from + unit_bytes, tensor.size);
      for (uint64_t at = from; at < to;) {
        const size_t n =
            static_cast<size_t>(std::min<uint64_t>(chunk_bytes, to - at));
        chunk.Clear();
        chunk.set_tensor(tensor.name);
        chunk.set_offset(at);
        chunk.set_data(tensor.data + at, n);
        chunk.set_crc32c(Crc32c(tensor.data + at, n));
        if (!emit(chunk)) {
          return absl::CancelledError(
              absl::StrCat("the receiver of ", tensor.name, " went away"));
        }
        if (sent) sent(n);
        at += n;
      }
      if (done_with) done_with(t, from, to);
    }
  }
  return absl::OkStatus();
}

ChunkVerifier::ChunkVerifier(std::string tensor, uint64_t size)
    : tensor_(std::move(tensor)), size_(size) {}

absl::Status ChunkVerifier::Accept(const v1::Chunk& chunk) {
  if (done_) {
    return absl::DataLossError(
        absl::StrCat(tensor_, ": chunk after the last one"));
  }
  if (chunk.tensor() != tensor_) {
    return absl::DataLossError(absl::StrCat("expected a chunk of ", tensor_,
                                            ", got one of ", chunk.tensor()));
  }
  if (chunk.offset() != offset_) {
    return absl::DataLossError(absl::StrCat(
        tensor_, ": chunk at offset ", chunk.offset(), ", expected ", offset_));
  }
  if (chunk.has_info() && chunk.info().size_bytes() != size_) {
    return absl::DataLossError(absl::StrCat(tensor_, ": stream says ",
                                            chunk.info().size_bytes(),
                                            " bytes, expected ", size_));
  }
  const std::string& data = chunk.data();
  if (offset_ + data.size() > size_) {
    return absl::DataLossError(
        absl::StrCat(tensor_, ": chunk runs past its ", size_, " bytes"));
  }
  if (Crc32c(data.data(), data.size()) != chunk.crc32c()) {
    return absl::DataLossError(absl::StrCat(
        tensor_, ": CRC-32C mismatch in the chunk at offset ", offset_));
  }
  hash_.Update(data.data(), data.size());
  offset_ += data.size();
  if (chunk.last()) {
    if (offset_ != size_) {
      return absl::DataLossError(absl::StrCat(
          tensor_, ": last chunk after ", offset_, " of ", size_, " bytes"));
    }
    digest_ = hash_.Finish();
    if (digest_ != chunk.digest()) {
      return absl::DataLossError(absl::StrCat(tensor_, ": digest mismatch"));
    }
    done_ = true;
  }
  return absl::OkStatus();
}

}  // namespace quant
