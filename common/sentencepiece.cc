#include "common/sentencepiece.h"

#include <dlfcn.h>

#include <new>
#include <string_view>

#include "absl/strings/str_cat.h"

// The header declares `namespace absl { using std::string_view; }`, which
// clashes with Abseil's own absl::string_view class (Debian builds Abseil
// with ABSL_OPTION_USE_STD_STRING_VIEW 0); the macro moves that shim into a
// namespace of its own while the header is read.
#define absl quant_sentencepiece_absl_shim
#include <sentencepiece_processor.h>
#undef absl

// The library's util::Status members the virtual calls need on this side
// (the destructor of a returned status, its text). They are defined here,
// over the library's own layout of Status::Rep (util.cc: a code and a
// message), because the library is not linked; inside the library,
// RTLD_DEEPBIND keeps its own definitions.
namespace sentencepiece {
namespace util {
struct Status::Rep {
  StatusCode code;
  std::string error_message;
};
Status::~Status() = default;
std::string Status::ToString() const {
  if (rep_ == nullptr) return "OK";
  return absl::StrCat("code ", static_cast<int>(rep_->code), ": ",
                      rep_->error_message);
}
}  // namespace util
}  // namespace sentencepiece

namespace quant {
namespace {

using Processor = sentencepiece::SentencePieceProcessor;
using Constructor = void (*)(Processor*);

// The library, opened once for the process; or why it could not be.
struct Library {
  void* handle = nullptr;
  Constructor construct = nullptr;
  std::string error;
};

const Library& OpenLibrary() {
  static const Library* const library = [] {
    auto* lib = new Library;
    lib->handle =
        dlopen("libsentencepiece.so.0", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (lib->handle == nullptr) {
      lib->error = dlerror();
      return lib;
    }
    // SentencePieceProcessor::SentencePieceProcessor() (complete object).
    lib->construct = reinterpret_cast<Constructor>(
        dlsym(lib->handle, "_ZN13sentencepiece22SentencePieceProcessorC1Ev"));
    if (lib->construct == nullptr) lib->error = dlerror();
    return lib;
  }();
  return *library;
}

}  // namespace

struct SentencePieceModel::Impl {
  Processor* processor = nullptr;
  ~Impl() {
    if (processor == nullptr) return;
    processor->~Processor();  // Virtual: the library's destructor.
    ::operator delete(processor);
  }
};

SentencePieceModel::SentencePieceModel(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
SentencePieceModel::~SentencePieceModel() = default;

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Load(
    const std::string& path) {
  const Library& library = OpenLibrary();
  if (library.construct == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load libsentencepiece.so.0 (install "
                     "libsentencepiece0): ",
                     library.error));
  }
  auto impl = std::make_unique<Impl>();
  void* memory = ::operator new(sizeof(Processor));
  library.construct(static_cast<Processor*>(memory));
  impl->processor = static_cast<Processor*>(memory);
  const sentencepiece::util::Status loaded =
      impl->processor->Load(std::string_view(path));
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot load SentencePiece model ", path, ": ", loaded.ToString()));
  }
  return std::unique_ptr<SentencePieceModel>(
      new SentencePieceModel(std::move(impl)));
}

absl::StatusOr<std::vector<int>> SentencePieceModel::Encode(
    absl::string_view text) const {
  std::vector<int> ids;
  const sentencepiece::util::Status encoded = impl_->processor->Encode(
      std::string_view(text.data(), text.size()), &ids);
  if (!encoded.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot tokenize the text: ", encoded.ToString()));
  }
  return ids;
}

int SentencePieceModel::PieceSize() const {
  return impl_->processor->GetPieceSize();
}
std::string SentencePieceModel::IdToPiece(int id) const {
  return impl_->processor->IdToPiece(id);
}
float SentencePieceModel::Score(int id) const {
  return impl_->processor->GetScore(id);
}
bool SentencePieceModel::IsUnknown(int id) const {
  return impl_->processor->IsUnknown(id);
}
bool SentencePieceModel::IsControl(int id) const {
  return impl_->processor->IsControl(id);
}
bool SentencePieceModel::IsUnused(int id) const {
  return impl_->processor->IsUnused(id);
}
bool SentencePieceModel::IsByte(int id) const {
  return impl_->processor->IsByte(id);
}
int SentencePieceModel::bos_id() const { return impl_->processor->bos_id(); }
int SentencePieceModel::eos_id() const { return impl_->processor->eos_id(); }
int SentencePieceModel::unk_id() const { return impl_->processor->unk_id(); }
int SentencePieceModel::pad_id() const { return impl_->processor->pad_id(); }

}  // namespace quant
