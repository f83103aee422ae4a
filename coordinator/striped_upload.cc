#include "coordinator/striped_upload.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/status_macros.h"

namespace quant {
namespace {

constexpr int kMaxStreams = 64;
constexpr uint64_t kMinUnitBytes = 4096;
constexpr uint64_t kMaxUnitBytes = uint64_t{1} << 30;
constexpr size_t kMaxUploadIdBytes = 128;
constexpr size_t kHashReadBytes = 4 << 20;

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

}  // namespace

StripedUpload::StripedUpload(const v1::UploadStripe& stripe) : stripe_(stripe) {
  stream_started_.assign(stripe.count(), false);
}

absl::StatusOr<std::shared_ptr<StripedUpload>> StripedUpload::Create(
    const std::string& dir, const v1::UploadStripe& stripe,
    const std::vector<std::string>& expected,
    const std::set<std::string>& optional, uint64_t max_output_bytes) {
  if (stripe.upload_id().empty() ||
      stripe.upload_id().size() > kMaxUploadIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a striped upload's id has 1 to ", kMaxUploadIdBytes,
                     " bytes, not ", stripe.upload_id().size()));
  }
  if (stripe.count() < 1 || stripe.count() > kMaxStreams) {
    return absl::InvalidArgumentError(
        absl::StrCat("a striped upload has 1 to ", kMaxStreams,
                     " streams, not ", stripe.count()));
  }
  if (stripe.unit_bytes() < kMinUnitBytes ||
      stripe.unit_bytes() > kMaxUnitBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a striped upload's unit is ", kMinUnitBytes, " to ",
                     kMaxUnitBytes, " bytes, not ", stripe.unit_bytes()));
  }
  std::shared_ptr<StripedUpload> upload(new StripedUpload(stripe));
  std::set<std::string> named;
  for (const v1::DeferredOutput& entry : stripe.outputs()) {
    RETURN_IF_ERROR(CheckDeclaredOutput(entry.name(), entry.size_bytes(),
                                        !named.insert(entry.name()).second,
                                        expected, max_output_bytes));
    if (!IsHexDigest(entry.digest())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", entry.name(), "\": \"", entry.digest().substr(0, 80),
          "\" is not a digest in hex"));
    }
    Output& out = upload->outputs_.emplace_back();
    out.name = entry.name();
    out.size = entry.size_bytes();
    out.digest = absl::HexStringToBytes(entry.digest());
    out.final_path = absl::StrCat(dir, "/", entry.name());
    out.temp_path = absl::StrCat(dir, "/.", entry.name(), ".striped");
    out.units = (out.size + stripe.unit_bytes() - 1) / stripe.unit_bytes();
    out.pieces.resize(ContentDigest::PiecesOf(out.size));
    for (uint64_t p = 0; p < out.pieces.size(); ++p) {
      out.piece_missing.push_back(
          std::min(kDigestPieceBytes, out.size - p * kDigestPieceBytes));
    }
  }
  RETURN_IF_ERROR(CheckNoOutputMissing(
      expected, optional,
      [&named](const std::string& name) { return named.count(name) > 0; }));
  for (Output& out : upload->outputs_) {
    out.fd = open(out.temp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
                  0644);
    if (out.fd < 0) return ErrnoError("cannot create", out.temp_path);
    if (ftruncate(out.fd, static_cast<off_t>(out.size)) != 0) {
      return ErrnoError("cannot size", out.temp_path);
    }
  }
  return upload;
}

StripedUpload::~StripedUpload() {
  for (Output& out : outputs_) {
    if (out.fd >= 0) close(out.fd);
    if (!committed_) unlink(out.temp_path.c_str());
  }
}

bool StripedUpload::SameUpload(const v1::UploadStripe& stripe) const {
  if (stripe.upload_id() != stripe_.upload_id() ||
      stripe.count() != stripe_.count() ||
      stripe.unit_bytes() != stripe_.unit_bytes() ||
      stripe.outputs_size() != stripe_.outputs_size()) {
    return false;
  }
  for (int i = 0; i < stripe.outputs_size(); ++i) {
    const v1::DeferredOutput& a = stripe.outputs(i);
    const v1::DeferredOutput& b = stripe_.outputs(i);
    if (a.name() != b.name() || a.digest() != b.digest() ||
        a.size_bytes() != b.size_bytes()) {
      return false;
    }
  }
  return true;
}

void StripedUpload::Abort(absl::Status why) { (void)Fail(std::move(why)); }

absl::Status StripedUpload::Fail(absl::Status why) {
  absl::MutexLock lock(&mu_);
  if (status_.ok()) status_ = std::move(why);
  failed_ = true;
  return status_;
}

absl::Status StripedUpload::ReceiveStream(
    int index, const std::function<bool(v1::UploadResultRequest*)>& read,
    uint64_t* stream_bytes, bool* last) {
  *stream_bytes = 0;
  *last = false;
  const int count = stripe_.count();
  if (index < 0 || index >= count) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        "stream ", index, " of an upload in ", count, " streams")));
  }
  {
    absl::MutexLock lock(&mu_);
    if (!status_.ok()) return status_;
    if (stream_started_[index]) {
      status_ = absl::InvalidArgumentError(absl::StrCat(
          "stream ", index, " of upload ", stripe_.upload_id(), " came twice"));
      failed_ = true;
      return status_;
    }
    stream_started_[index] = true;
  }
  const uint64_t unit = stripe_.unit_bytes();
  // Units of whole pieces (the worker's default): each piece is hashed from
  // the chunks as they come, in order within the unit, instead of read
  // back once its unit is written.
  const bool hash_as_received = unit % kDigestPieceBytes == 0;
  Sha256 piece_hash;
  // Where this stream stands: output o, its unit u, the offset of the next
  // chunk.
  size_t o = 0;
  uint64_t u = index;
  uint64_t at = 0;
  const auto settle = [&] {
    while (o < outputs_.size() && u >= outputs_[o].units) {
      ++o;
      u = index;
    }
    at = o < outputs_.size() ? u * unit : 0;
  };
  settle();
  v1::UploadResultRequest message;
  while (read(&message)) {
    if (failed_) return Fail(absl::AbortedError("failed elsewhere"));
    if (!message.has_chunk()) {
      return Fail(absl::InvalidArgumentError("an upload sends its task once"));
    }
    const v1::Chunk& chunk = message.chunk();
    if (o == outputs_.size()) {
      return Fail(absl::DataLossError(
          absl::StrCat("stream ", index, ": a chunk of ", chunk.tensor(),
                       " after the stream's last unit")));
    }
    const Output& out = outputs_[o];
    if (chunk.tensor() != out.name || chunk.offset() != at) {
      return Fail(absl::DataLossError(absl::StrCat(
          "stream ", index, ": expected ", out.name, " at offset ", at,
          ", got a chunk of ", chunk.tensor(), " at ", chunk.offset())));
    }
    const uint64_t unit_end = std::min((u + 1) * unit, out.size);
    const std::string& data = chunk.data();
    if (data.empty() || at + data.size() > unit_end) {
      return Fail(absl::DataLossError(absl::StrCat(
          out.name, ": a chunk of ", data.size(), " bytes at offset ", at,
          " in the unit ending at ", unit_end)));
    }
    if (Crc32c(data.data(), data.size()) != chunk.crc32c()) {
      return Fail(absl::DataLossError(absl::StrCat(
          out.name, ": CRC-32C mismatch in the chunk at offset ", at)));
    }
    for (size_t done = 0; done < data.size();) {
      const ssize_t n = pwrite(out.fd, data.data() + done, data.size() - done,
                               static_cast<off_t>(at + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Fail(ErrnoError("cannot write", out.temp_path));
      done += static_cast<size_t>(n);
    }
    for (size_t done = 0; hash_as_received && done < data.size();) {
      const uint64_t piece = (at + done) / kDigestPieceBytes;
      const uint64_t piece_end =
          std::min((piece + 1) * kDigestPieceBytes, out.size);
      const size_t n = static_cast<size_t>(
          std::min<uint64_t>(data.size() - done, piece_end - (at + done)));
      piece_hash.Update(data.data() + done, n);
      done += n;
      // Only this stream writes this piece's entry.
      if (at + done == piece_end)
        outputs_[o].pieces[piece] = piece_hash.Finish();
    }
    at += data.size();
    *stream_bytes += data.size();
    if (at == unit_end) {
      // Writeback starts now, so that the commit's fsync finds little left
      // to write (8.6 GB per 70B block).
      (void)sync_file_range(out.fd, static_cast<off_t>(u * unit),
                            static_cast<off_t>(unit_end - u * unit),
                            SYNC_FILE_RANGE_WRITE);
      if (!hash_as_received) RETURN_IF_ERROR(UnitDone(o, u));
      u += count;
      settle();
    }
  }
  if (o < outputs_.size()) {
    return Fail(absl::DataLossError(
        absl::StrCat("stream ", index, " ended at ", outputs_[o].name,
                     " offset ", at, " of ", outputs_[o].size)));
  }
  {
    absl::MutexLock lock(&mu_);
    if (!status_.ok()) return status_;
    if (++streams_ended_ < count) return absl::OkStatus();
  }
  // Every piece is hashed (by the stream that completed it, before that
  // stream ended).
  *last = true;
  for (const Output& out : outputs_) {
    if (ContentDigest::Combine(out.size, out.pieces) != out.digest) {
      return Fail(
          absl::DataLossError(absl::StrCat(out.name, ": digest mismatch")));
    }
  }
  return Commit();
}

absl::Status StripedUpload::UnitDone(size_t output, uint64_t unit) {
  Output& out = outputs_[output];
  const uint64_t from = unit * stripe_.unit_bytes();
  const uint64_t to = std::min(from + stripe_.unit_bytes(), out.size);
  std::vector<uint64_t> complete;
  {
    absl::MutexLock lock(&mu_);
    for (uint64_t p = from / kDigestPieceBytes; p * kDigestPieceBytes < to;
         ++p) {
      const uint64_t overlap = std::min(to, (p + 1) * kDigestPieceBytes) -
                               std::max(from, p * kDigestPieceBytes);
      out.piece_missing[p] -= overlap;
      if (out.piece_missing[p] == 0) complete.push_back(p);
    }
  }
  for (const uint64_t piece : complete) RETURN_IF_ERROR(HashPiece(out, piece));
  return absl::OkStatus();
}

absl::Status StripedUpload::HashPiece(Output& out, uint64_t piece) {
  const uint64_t from = piece * kDigestPieceBytes;
  const uint64_t to = std::min(from + kDigestPieceBytes, out.size);
  std::vector<char> buffer(std::min<uint64_t>(kHashReadBytes, to - from));
  Sha256 hash;
  for (uint64_t at = from; at < to;) {
    const ssize_t n =
        pread(out.fd, buffer.data(), std::min<uint64_t>(buffer.size(), to - at),
              static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Fail(ErrnoError("cannot read back", out.temp_path));
    hash.Update(buffer.data(), static_cast<size_t>(n));
    at += static_cast<uint64_t>(n);
  }
  out.pieces[piece] = hash.Finish();
  return absl::OkStatus();
}

absl::Status StripedUpload::Commit() {
  for (Output& out : outputs_) {
    if (fsync(out.fd) != 0)
      return Fail(ErrnoError("cannot sync", out.temp_path));
    close(out.fd);
    out.fd = -1;
  }
  for (const Output& out : outputs_) {
    const absl::Status renamed = RenameDurably(out.temp_path, out.final_path);
    if (!renamed.ok()) return Fail(renamed);
    UploadReceiver::Received& r = received_[out.name];
    r.path = out.final_path;
    r.bytes = out.size;
    r.digest = out.digest;
  }
  committed_ = true;
  return absl::OkStatus();
}

}  // namespace quant
