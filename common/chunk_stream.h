// Tensors as streams of chunks (proto quant.v1.Chunk): at most a given
// number of bytes each, each with the CRC-32C of its data, the tensor's
// first chunk with its TensorInfo and its last with the content digest
// (common/checksum.h) of all its bytes. The sending and the checking side
// of every stream in the service (inputs to workers, results back).
#ifndef COMMON_CHUNK_STREAM_H_
#define COMMON_CHUNK_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/checksum.h"
#include "proto/quant/v1/common.pb.h"

namespace quant {

// Sends bytes [offset, info.size_bytes()) of the tensor whose bytes are
// `data`, in chunks of at most `chunk_bytes`, to `emit` (false: the
// receiver is gone; Cancelled). A tensor of zero bytes is one chunk. With
// offset > 0 (a resumed stream) the digest still covers every byte.
// `sent` (optional) is told the size of each chunk's data once emitted.
// `done_with` (optional) is told, every kSendReleaseBytes or so and at the
// end (and for a resumed stream's prefix, hashed first, a window at a
// time), the next byte range [from, to) of `data` it will not read again:
// a mapped file's pages can go (a sender's memory is then a window, not
// the tensor: a 70B embedding is 2 GB, its activations 8.6 GB).
// `digest` (raw; empty: computed here) is the tensor's digest when the
// sender knows it already (activations committed by it, uploaded later):
// sent as is, for the receiver to check as any other, and not computed
// again (seconds of a worker's CPU per 70B block).
inline constexpr uint64_t kSendReleaseBytes = 64 << 20;
absl::Status SendTensor(
    const v1::TensorInfo& info, const uint8_t* data, uint64_t offset,
    size_t chunk_bytes, const std::function<bool(const v1::Chunk&)>& emit,
    const std::function<void(size_t)>& sent = {},
    const std::function<void(uint64_t from, uint64_t to)>& done_with = {},
    absl::string_view digest = {});

// Stream `index` of a striped upload (proto quant.v1.UploadStripe) of
// `tensors` over `count` streams: of each tensor in turn, its units of
// `unit_bytes` u with u % count == index, in order, as chunks of at most
// `chunk_bytes` (tensor, offset, data, crc32c) that do not cross a unit,
// to `emit` (false: the receiver is gone; Cancelled). `sent` is told each
// chunk's size once emitted; `done_with` each unit's tensor and byte range
// once sent.
struct StripedTensor {
  std::string name;
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};
absl::Status SendStripe(const std::vector<StripedTensor>& tensors, int index,
                        int count, uint64_t unit_bytes, size_t chunk_bytes,
                        const std::function<bool(const v1::Chunk&)>& emit,
                        const std::function<void(size_t)>& sent = {},
                        const std::function<void(size_t tensor, uint64_t from,
                                                 uint64_t to)>& done_with = {});

// Checks the chunks of one tensor as they arrive, in order. Each Accept
// returns DataLoss naming the tensor for a wrong name, an offset out of
// order, a chunk past the expected size, a CRC-32C or (on the last chunk) a
// digest mismatch or a short tensor.
class ChunkVerifier {
 public:
  ChunkVerifier(std::string tensor, uint64_t size);
  absl::Status Accept(const v1::Chunk& chunk);
  bool done() const { return done_; }
  uint64_t offset() const { return offset_; }
  const std::string& tensor() const { return tensor_; }
  // The digest of the tensor, once done.
  const std::string& digest() const { return digest_; }

 private:
  const std::string tensor_;
  const uint64_t size_;
  uint64_t offset_ = 0;
  ContentDigest hash_;
  bool done_ = false;
  std::string digest_;
};

}  // namespace quant

#endif  // COMMON_CHUNK_STREAM_H_
