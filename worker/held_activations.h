// Activations a worker produced and the coordinator committed, kept in the
// worker's scratch volume: when the next block is leased to the same
// worker (the scheduler's affinity), it reads them here instead of fetching
// them again (8.6 GB per block boundary at 70B). The coordinator names the
// committed digest in the task spec; a file is used only when the digest
// recorded with it (the one its upload sent) is that one. The last set
// kept is also kept in memory, as F32 values: a block that follows on this
// worker starts without reading 8.6 GB.
#ifndef WORKER_HELD_ACTIVATIONS_H_
#define WORKER_HELD_ACTIVATIONS_H_

#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/background_remover.h"

namespace quant {

class HeldActivations {
 public:
  // `dir` is emptied (what a previous run left is not known to be
  // committed) and created. At most `capacity` files are kept, the oldest
  // going first; 0 keeps none. Files dropped go to `remover` (not owned;
  // null: removed at once), which must outlive this object.
  static absl::StatusOr<std::unique_ptr<HeldActivations>> Create(
      const std::string& dir, int capacity,
      BackgroundRemover* remover = nullptr);

  // Moves `path` in: the activations entering block `boundary` of job
  // `job_id` (calibration shard `shard` of a data-parallel job, else 0),
  // whose bytes have digest `digest` (hex). Replaces an earlier file of
  // the same boundary and shard. A `pinned` file (committed deferred: the
  // coordinator has only its digest until it is uploaded) is not evicted
  // for room until Unpin; the others may exceed the capacity meanwhile.
  absl::Status Put(const std::string& job_id, int boundary, int shard,
                   const std::string& path, const std::string& digest,
                   bool pinned = false);
  // Put, for a file that `write` writes from `values` (to the path it is
  // given) on a thread of its own; the values are kept in memory as with
  // KeepInMemory. Find waits for the write, and a failed write drops the
  // file. Returns the write's outcome, ready once it is done.
  std::shared_future<absl::Status> PutWriting(
      const std::string& job_id, int boundary, int shard,
      const std::string& digest, bool pinned,
      std::shared_ptr<std::vector<float>> values,
      std::function<absl::Status(const std::string& path,
                                 const std::vector<float>& values)>
          write);
  void Unpin(const std::string& job_id, int boundary, int shard);
  // The file held for (job_id, boundary, shard) when it was put with
  // `digest`; nullopt when none is, or (dropped then) one of another digest.
  std::optional<std::string> Find(const std::string& job_id, int boundary,
                                  int shard, const std::string& digest);
  // Drops the file and the values in memory.
  void Drop(const std::string& job_id, int boundary, int shard);

  // Keeps `values` (the F32 values of the file Put under the same key and
  // digest) in memory in place of any set kept before; nothing with
  // capacity 0.
  void KeepInMemory(const std::string& job_id, int boundary, int shard,
                    const std::string& digest,
                    std::shared_ptr<std::vector<float>> values);
  // The values kept in memory for (job_id, boundary, shard) with `digest`,
  // or null. With `take` they are kept no longer (the caller overwrites
  // them, once `written`, when valid, is ready: their file is still being
  // written from them). Values of another key are released either way: a
  // task's memory budget has room for one set of input activations, its
  // own.
  std::shared_ptr<std::vector<float>> FindInMemory(
      const std::string& job_id, int boundary, int shard,
      const std::string& digest, bool take,
      std::shared_future<absl::Status>* written = nullptr);
  // Releases the values kept in memory (a task that reads none begins).
  void ReleaseMemory();

 private:
  HeldActivations(std::string dir, int capacity, BackgroundRemover* remover)
      : dir_(std::move(dir)), capacity_(capacity), remover_(remover) {}
  std::string PathOf(const std::string& key) const;
  void DropLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  const int capacity_;
  BackgroundRemover* const remover_;
  absl::Mutex mu_;
  struct Held {
    std::string key;  // "<job>-<boundary>-<shard>".
    std::string digest;
    bool pinned = false;
    std::shared_future<absl::Status> written;  // Valid: PutWriting's.
  };
  // Makes room for a file of `key` (dropping the old one, then the oldest
  // unpinned beyond the capacity); false when none is to be kept.
  bool MakeRoomLocked(const std::string& key, const std::string& digest,
                      bool pinned) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::deque<Held> held_ ABSL_GUARDED_BY(mu_);  // Oldest first.
  // The set kept in memory, under its key and digest.
  std::string memory_key_ ABSL_GUARDED_BY(mu_);
  std::string memory_digest_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<std::vector<float>> memory_ ABSL_GUARDED_BY(mu_);
  std::shared_future<absl::Status> memory_written_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quant

#endif  // WORKER_HELD_ACTIVATIONS_H_
