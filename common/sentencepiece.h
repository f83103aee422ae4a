// SentencePiece tokenizers (tokenizer.model), loaded so that they can live
// in the same process as gRPC and protobuf.
//
// Debian's libsentencepiece (0.1.97) carries its own copy of protobuf-lite
// 3.14 and exports it; linked into a program that also links libprotobuf
// 3.21 (every gRPC program), one of the two copies aborts or crashes at
// start-up, whatever the link order. So the library is never linked: it is
// opened with dlopen(RTLD_LOCAL | RTLD_DEEPBIND), which binds it to its own
// protobuf, and used only through its virtual methods (dispatched through
// its own vtables) and a constructor looked up by name.
#ifndef COMMON_SENTENCEPIECE_H_
#define COMMON_SENTENCEPIECE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quant {

class SentencePieceModel {
 public:
  // InvalidArgument naming `path` when it is not a SentencePiece model;
  // FailedPrecondition when libsentencepiece.so.0 is not installed.
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> Load(
      const std::string& path);
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  absl::StatusOr<std::vector<int>> Encode(absl::string_view text) const;

  int PieceSize() const;
  std::string IdToPiece(int id) const;
  float Score(int id) const;
  bool IsUnknown(int id) const;
  bool IsControl(int id) const;
  bool IsUnused(int id) const;
  bool IsByte(int id) const;
  int bos_id() const;  // -1 when the model has none; likewise below.
  int eos_id() const;
  int unk_id() const;
  int pad_id() const;

 private:
  struct Impl;
  explicit SentencePieceModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace quant

#endif  // COMMON_SENTENCEPIECE_H_
