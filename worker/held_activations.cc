#include "worker/held_activations.h"

#include <algorithm>
#include <filesystem>
#include <future>
#include <utility>

#include "absl/strings/str_cat.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

// A file name: the job id (the coordinator's) with anything but letters,
// digits, '-' and '_' replaced (a collision is harmless: a file is used only
// under its digest).
std::string KeyOf(const std::string& job_id, int boundary, int shard) {
  std::string key = job_id;
  for (char& c : key) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!plain) c = '_';
  }
  return absl::StrCat(key, "-", boundary, "-", shard);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HeldActivations>> HeldActivations::Create(
    const std::string& dir, int capacity, BackgroundRemover* remover) {
  std::error_code error;
  fs::remove_all(dir, error);
  fs::create_directories(dir, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", dir, ": ", error.message()));
  }
  return std::unique_ptr<HeldActivations>(
      new HeldActivations(dir, std::max(0, capacity), remover));
}

std::string HeldActivations::PathOf(const std::string& key) const {
  return absl::StrCat(dir_, "/", key, ".safetensors");
}

void HeldActivations::DropLocked(const std::string& key) {
  const auto it = std::find_if(held_.begin(), held_.end(),
                               [&](const Held& h) { return h.key == key; });
  // A file still being written would appear after its removal.
  if (it != held_.end() && it->written.valid()) it->written.wait();
  if (remover_ != nullptr) {
    remover_->Remove(PathOf(key));
  } else {
    std::error_code error;
    fs::remove(PathOf(key), error);
  }
  if (memory_key_ == key) memory_.reset();
  if (it != held_.end()) held_.erase(it);
}

bool HeldActivations::MakeRoomLocked(const std::string& key,
                                     const std::string& digest, bool pinned) {
  DropLocked(key);
  if ((capacity_ == 0 && !pinned) || digest.empty()) return false;
  while (static_cast<int>(held_.size()) >= capacity_) {
    const auto oldest = std::find_if(held_.begin(), held_.end(),
                                     [](const Held& h) { return !h.pinned; });
    if (oldest == held_.end()) break;
    DropLocked(std::string(oldest->key));  // A copy: the entry goes.
  }
  return true;
}

absl::Status HeldActivations::Put(const std::string& job_id, int boundary,
                                  int shard, const std::string& path,
                                  const std::string& digest, bool pinned) {
  const std::string key = KeyOf(job_id, boundary, shard);
  absl::MutexLock lock(&mu_);
  if (!MakeRoomLocked(key, digest, pinned)) return absl::OkStatus();
  std::error_code error;
  fs::rename(path, PathOf(key), error);
  if (error) {
    return absl::InternalError(absl::StrCat(
        "cannot keep ", path, " as ", PathOf(key), ": ", error.message()));
  }
  held_.push_back({key, digest, pinned});
  return absl::OkStatus();
}

std::shared_future<absl::Status> HeldActivations::PutWriting(
    const std::string& job_id, int boundary, int shard,
    const std::string& digest, bool pinned,
    std::shared_ptr<std::vector<float>> values,
    std::function<absl::Status(const std::string& path,
                               const std::vector<float>& values)>
        write) {
  const std::string key = KeyOf(job_id, boundary, shard);
  absl::MutexLock lock(&mu_);
  if (!MakeRoomLocked(key, digest, pinned)) {
    std::promise<absl::Status> none;
    none.set_value(absl::CancelledError(
        absl::StrCat("activations of ", key, " are not kept")));
    return none.get_future().share();
  }
  // The thread lets go of its reference to the values once written: the
  // memory hold alone decides how long they stay.
  std::shared_future<absl::Status> written =
      std::async(std::launch::async, [write = std::move(write),
                                      path = PathOf(key), values]() mutable {
        absl::Status status = write(path, *values);
        values.reset();
        return status;
      }).share();
  held_.push_back({key, digest, pinned, written});
  if (capacity_ > 0) {
    memory_key_ = key;
    memory_digest_ = digest;
    memory_ = std::move(values);
    memory_written_ = written;
  }
  return written;
}

void HeldActivations::Unpin(const std::string& job_id, int boundary,
                            int shard) {
  const std::string key = KeyOf(job_id, boundary, shard);
  absl::MutexLock lock(&mu_);
  for (Held& h : held_) {
    if (h.key == key) h.pinned = false;
  }
}

std::optional<std::string> HeldActivations::Find(const std::string& job_id,
                                                 int boundary, int shard,
                                                 const std::string& digest) {
  const std::string key = KeyOf(job_id, boundary, shard);
  absl::MutexLock lock(&mu_);
  const auto it = std::find_if(held_.begin(), held_.end(),
                               [&](const Held& h) { return h.key == key; });
  if (it == held_.end()) return std::nullopt;
  // Written by now, or never to be.
  const bool written = !it->written.valid() || it->written.get().ok();
  std::error_code error;
  if (digest.empty() || it->digest != digest || !written ||
      !fs::is_regular_file(PathOf(key), error)) {
    DropLocked(key);  // Not what was committed (or gone): of no use.
    return std::nullopt;
  }
  return PathOf(key);
}

void HeldActivations::Drop(const std::string& job_id, int boundary, int shard) {
  absl::MutexLock lock(&mu_);
  DropLocked(KeyOf(job_id, boundary, shard));
}

void HeldActivations::KeepInMemory(const std::string& job_id, int boundary,
                                   int shard, const std::string& digest,
                                   std::shared_ptr<std::vector<float>> values) {
  absl::MutexLock lock(&mu_);
  memory_.reset();
  memory_written_ = {};
  if (capacity_ == 0 || digest.empty()) return;
  memory_key_ = KeyOf(job_id, boundary, shard);
  memory_digest_ = digest;
  memory_ = std::move(values);
}

std::shared_ptr<std::vector<float>> HeldActivations::FindInMemory(
    const std::string& job_id, int boundary, int shard,
    const std::string& digest, bool take,
    std::shared_future<absl::Status>* written) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<std::vector<float>> found;
  if (memory_ != nullptr && memory_key_ == KeyOf(job_id, boundary, shard) &&
      !digest.empty() && memory_digest_ == digest) {
    found = memory_;
    if (written != nullptr) *written = memory_written_;
    if (!take) return found;
  }
  memory_.reset();
  return found;
}

void HeldActivations::ReleaseMemory() {
  absl::MutexLock lock(&mu_);
  memory_.reset();
}

}  // namespace quant
