// Removes files and directories on a thread of its own. Unlinking a
// worker's 8.6 GB file (a 70B block's activations) hands its page-cache
// pages back to the kernel, about a second that the next task need not
// wait for.
#ifndef WORKER_BACKGROUND_REMOVER_H_
#define WORKER_BACKGROUND_REMOVER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace quant {

class BackgroundRemover {
 public:
  // `trash_dir` (what a previous run left there is removed first, before
  // this returns) must be on the file system of the paths given to Remove:
  // they are renamed into it.
  static absl::StatusOr<std::unique_ptr<BackgroundRemover>> Create(
      const std::string& trash_dir);
  BackgroundRemover(const BackgroundRemover&) = delete;
  BackgroundRemover& operator=(const BackgroundRemover&) = delete;
  // Removes what is still queued, then returns.
  ~BackgroundRemover();

  // When this returns, `path` (a file or a directory) no longer exists
  // under its name, which may be used again; its contents are removed on
  // this object's thread. Where it cannot be renamed into the trash, it is
  // removed here and now. An absent path is no error.
  void Remove(const std::string& path);
  // Waits until everything given to Remove so far is removed.
  void Wait();

 private:
  explicit BackgroundRemover(std::string trash_dir);
  void RemoveLoop();

  const std::string trash_dir_;
  absl::Mutex mu_;
  std::deque<std::string> queued_ ABSL_GUARDED_BY(mu_);  // In the trash.
  int64_t next_name_ ABSL_GUARDED_BY(mu_) = 0;
  bool removing_ ABSL_GUARDED_BY(mu_) = false;  // The thread is at one.
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace quant

#endif  // WORKER_BACKGROUND_REMOVER_H_
