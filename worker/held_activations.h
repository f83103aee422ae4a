// Activations a worker produced and the coordinator committed, kept in the
// worker's scratch volume: when the next block is leased to the same
// worker (the scheduler's affinity), it reads them here instead of fetching
// them again (8.6 GB per block boundary at 70B). The coordinator names the
// committed digest in the task spec; a file is used only when the digest
// recorded with it (the one its upload sent) is that one.
#ifndef WORKER_HELD_ACTIVATIONS_H_
#define WORKER_HELD_ACTIVATIONS_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace quant {

class HeldActivations {
 public:
  // `dir` is emptied (what a previous run left is not known to be
  // committed) and created. At most `capacity` files are kept, the oldest
  // going first; 0 keeps none.
  static absl::StatusOr<std::unique_ptr<HeldActivations>> Create(
      const std::string& dir, int capacity);

  // Moves `path` in: the activations entering block `boundary` of job
  // `job_id` (calibration shard `shard` of a data-parallel job, else 0),
  // whose bytes have digest `digest` (hex). Replaces an earlier file of
  // the same boundary and shard. A `pinned` file (committed deferred: the
  // coordinator has only its digest until it is uploaded) is not evicted
  // for room until Unpin; the others may exceed the capacity meanwhile.
  absl::Status Put(const std::string& job_id, int boundary, int shard,
                   const std::string& path, const std::string& digest,
                   bool pinned = false);
  void Unpin(const std::string& job_id, int boundary, int shard);
  // The file held for (job_id, boundary, shard) when it was put with
  // `digest`; nullopt when none is, or (dropped then) one of another digest.
  std::optional<std::string> Find(const std::string& job_id, int boundary,
                                  int shard, const std::string& digest);
  void Drop(const std::string& job_id, int boundary, int shard);

 private:
  HeldActivations(std::string dir, int capacity)
      : dir_(std::move(dir)), capacity_(capacity) {}
  std::string PathOf(const std::string& key) const;
  void DropLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  const int capacity_;
  absl::Mutex mu_;
  struct Held {
    std::string key;  // "<job>-<boundary>-<shard>".
    std::string digest;
    bool pinned = false;
  };
  std::deque<Held> held_ ABSL_GUARDED_BY(mu_);  // Oldest first.
};

}  // namespace quant

#endif  // WORKER_HELD_ACTIVATIONS_H_
