#include "worker/background_remover.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace quant {

namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<BackgroundRemover>> BackgroundRemover::Create(
    const std::string& trash_dir) {
  std::error_code error;
  fs::remove_all(trash_dir, error);
  if (!error) fs::create_directories(trash_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot empty and create ",
                                            trash_dir, ": ", error.message()));
  }
  return std::unique_ptr<BackgroundRemover>(new BackgroundRemover(trash_dir));
}

BackgroundRemover::BackgroundRemover(std::string trash_dir)
    : trash_dir_(std::move(trash_dir)) {
  thread_ = std::thread([this] { RemoveLoop(); });
}

BackgroundRemover::~BackgroundRemover() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void BackgroundRemover::Remove(const std::string& path) {
  std::string aside;
  {
    absl::MutexLock lock(&mu_);
    aside = absl::StrCat(trash_dir_, "/", next_name_++);
  }
  std::error_code error;
  fs::rename(path, aside, error);
  if (error) {  // Absent, or on another file system.
    fs::remove_all(path, error);
    return;
  }
  absl::MutexLock lock(&mu_);
  queued_.push_back(std::move(aside));
}

void BackgroundRemover::Wait() {
  absl::MutexLock lock(&mu_);
  const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queued_.empty() && !removing_;
  };
  mu_.Await(absl::Condition(&idle));
}

void BackgroundRemover::RemoveLoop() {
  while (true) {
    std::string path;
    {
      absl::MutexLock lock(&mu_);
      removing_ = false;
      const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !queued_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (queued_.empty()) return;
      path = std::move(queued_.front());
      queued_.pop_front();
      removing_ = true;
    }
    std::error_code error;
    fs::remove_all(path, error);
  }
}

}  // namespace quant
