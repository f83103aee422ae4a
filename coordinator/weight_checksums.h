// The digest of each model tensor a job reads, recorded once by the
// coordinator after it planned the job, in the job directory (a restarted
// coordinator keeps them). Workers that see the model root themselves
// (direct reads) verify what they read against them before using it.
//
// The record is append-only, one "<digest hex>  <tensor name>" line per
// tensor, each fsynced: a line torn by a crash is ignored and hashed again.
#ifndef COORDINATOR_WEIGHT_CHECKSUMS_H_
#define COORDINATOR_WEIGHT_CHECKSUMS_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/job_store.h"
#include "coordinator/planner.h"

namespace quant {

// Where job_dir's record lives.
std::string WeightChecksumsPath(const std::string& job_dir);

// The record of `job_dir`: tensor name -> digest (hex); empty when none.
std::map<std::string, std::string> LoadWeightChecksums(
    const std::string& job_dir);

// The model tensors `tasks` read, in the order the tasks need them (the
// embedding, block after block, the head's tensors).
std::vector<std::string> TensorsToHash(const JobPlan& plan,
                                       const std::vector<TaskRow>& tasks,
                                       const std::vector<std::string>& model);

// Hashes the tensors of `model_dir` that `tasks` read (TensorsToHash) and
// the record lacks, in that order, appending each to the record as it is
// done; `recorded` (name, hex) is called after each. Stops early (OK) once
// `stop` says so. Errors name the tensor or the file.
absl::Status RecordWeightChecksums(
    const std::string& model_dir, const std::string& job_dir,
    const JobPlan& plan, const std::vector<TaskRow>& tasks,
    const std::function<bool()>& stop,
    const std::function<void(const std::string&, const std::string&)>&
        recorded);

}  // namespace quant

#endif  // COORDINATOR_WEIGHT_CHECKSUMS_H_
