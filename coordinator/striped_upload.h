// An upload sent as several streams side by side (proto UploadStripe): one
// gRPC stream is bound by one core on each end (protobuf, CRC-32C, digest,
// the write), which is 0.3-0.5 GB/s, and a 70B block's activations are
// 8.6 GB. Each stream's chunks are checked (CRC-32C, order, bounds) and
// written at their offsets by the stream's own thread; each 16 MiB piece of
// the content digest (common/checksum.h) is hashed by the stream that
// completes it, so the hashing is spread over the streams as the transfer
// is; the files are committed once every stream has ended and every output
// matches the digest of the manifest.
#ifndef COORDINATOR_STRIPED_UPLOAD_H_
#define COORDINATOR_STRIPED_UPLOAD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/checksum.h"
#include "coordinator/tensor_service.h"
#include "proto/quant/v1/worker_service.pb.h"

namespace quant {

class StripedUpload {
 public:
  // Checks the stripe's manifest against what the task outputs (`expected`;
  // those in `optional` may be absent) and its sizes against
  // `max_output_bytes` (InvalidArgument; FailedPrecondition for a missing
  // output), and creates each output's file in `dir`.
  static absl::StatusOr<std::shared_ptr<StripedUpload>> Create(
      const std::string& dir, const v1::UploadStripe& stripe,
      const std::vector<std::string>& expected,
      const std::set<std::string>& optional, uint64_t max_output_bytes);
  ~StripedUpload();  // Removes the files unless committed.

  StripedUpload(const StripedUpload&) = delete;
  StripedUpload& operator=(const StripedUpload&) = delete;

  // Whether a stream's stripe belongs to this upload: the same upload_id,
  // stream count, unit and manifest.
  bool SameUpload(const v1::UploadStripe& stripe) const;

  // Receives stream `index`'s chunks until `read` returns false. DataLoss
  // for a damaged, out-of-order or short stream or (on the last stream to
  // end) a digest mismatch; InvalidArgument for an index out of range or
  // one that came before; Aborted once the upload failed on another stream
  // or was aborted. Any error fails the whole upload. `stream_bytes` gets
  // the bytes this stream carried; `*last` whether it was the last stream
  // to end, the upload then verified and committed (received()).
  absl::Status ReceiveStream(
      int index, const std::function<bool(v1::UploadResultRequest*)>& read,
      uint64_t* stream_bytes, bool* last);

  // Fails the upload (a newer attempt began): its streams return `why`.
  void Abort(absl::Status why);

  // Once committed: each output's file, size and digest, by name.
  const std::map<std::string, UploadReceiver::Received>& received() const {
    return received_;
  }

 private:
  struct Output {
    std::string name;
    uint64_t size = 0;
    std::string digest;  // Raw, as the manifest says.
    std::string temp_path;
    std::string final_path;
    int fd = -1;
    uint64_t units = 0;
    // Per piece of the content digest: the bytes not yet written (under
    // mu_; units of whole pieces need no count), and the SHA-256 once
    // hashed (by the one stream that wrote its last bytes; read by the last
    // stream to end).
    std::vector<uint64_t> piece_missing;
    std::vector<std::string> pieces;
  };

  explicit StripedUpload(const v1::UploadStripe& stripe);
  absl::Status Fail(absl::Status why);
  // Marks a unit written and hashes the pieces it completed.
  absl::Status UnitDone(size_t output, uint64_t unit) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status HashPiece(Output& out, uint64_t piece);
  absl::Status Commit();

  const v1::UploadStripe stripe_;
  std::vector<Output> outputs_;  // Fixed after Create but for the pieces.
  std::atomic<bool> failed_{false};

  absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> stream_started_ ABSL_GUARDED_BY(mu_);
  int streams_ended_ ABSL_GUARDED_BY(mu_) = 0;

  bool committed_ = false;
  std::map<std::string, UploadReceiver::Received> received_;
};

}  // namespace quant

#endif  // COORDINATOR_STRIPED_UPLOAD_H_
