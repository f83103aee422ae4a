#include "coordinator/weight_checksums.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "format/safetensors.h"
#include "proto/task_tensors.h"

namespace quant {
namespace {

// The content digest (hex) of a mapped tensor, read a window at a time (a 70B
// embedding is 2 GB).
std::string HashTensor(const SafetensorsCheckpoint& model,
                       const TensorView& view) {
  ContentDigest digest;
  (void)model.ForEachWindow(view, 64 << 20,
                            [&](const uint8_t* data, size_t size) {
                              digest.Update(data, size);
                              return absl::OkStatus();
                            });
  return HexOf(digest.Finish());
}

}  // namespace

std::string WeightChecksumsPath(const std::string& job_dir) {
  return job_dir + "/weights.digest";
}

std::map<std::string, std::string> LoadWeightChecksums(
    const std::string& job_dir) {
  std::map<std::string, std::string> sums;
  std::ifstream in(WeightChecksumsPath(job_dir));
  std::string line;
  // Only whole lines count: the last may have been torn by a crash.
  while (std::getline(in, line) && !in.eof()) {
    if (line.size() > 66 && IsHexDigest(line.substr(0, 64)) &&
        line.substr(64, 2) == "  ") {
      sums[line.substr(66)] = line.substr(0, 64);
    }
  }
  return sums;
}

std::vector<std::string> TensorsToHash(const JobPlan& plan,
                                       const std::vector<TaskRow>& tasks,
                                       const std::vector<std::string>& model) {
  std::vector<std::string> names;
  std::set<std::string> seen;
  auto add = [&](const std::string& name) {
    if (seen.insert(name).second) names.push_back(name);
  };
  for (const TaskRow& task : tasks) {
    if (task.kind == kEmbedTask) {
      add("model.embed_tokens.weight");
    } else if (task.kind == kHeadTask) {
      for (const auto& [name, type] : plan.head_types) add(name);
    } else {
      const std::string prefix = absl::StrCat("model.layers.", task.layer, ".");
      for (const std::string& name : model) {
        if (absl::StartsWith(name, prefix)) add(name);
      }
    }
  }
  return names;
}

absl::Status RecordWeightChecksums(
    const std::string& model_dir, const std::string& job_dir,
    const JobPlan& plan, const std::vector<TaskRow>& tasks,
    const std::function<bool()>& stop,
    const std::function<void(const std::string&, const std::string&)>&
        recorded) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> model,
                   SafetensorsCheckpoint::Open(model_dir));
  const std::vector<std::string> names =
      TensorsToHash(plan, tasks, model->TensorNames());
  std::map<std::string, std::string> done = LoadWeightChecksums(job_dir);
  if (std::all_of(names.begin(), names.end(),
                  [&](const std::string& n) { return done.count(n) != 0; })) {
    return absl::OkStatus();
  }
  const std::string path = WeightChecksumsPath(job_dir);
  // A torn last line is cut off before appending, so that the next line
  // starts a line of its own.
  std::error_code error;
  {
    std::ifstream in(path, std::ios::binary);
    const std::string text(std::istreambuf_iterator<char>(in), {});
    const size_t whole = text.rfind('\n');
    const size_t keep = whole == std::string::npos ? 0 : whole + 1;
    if (keep != text.size() && ::truncate(path.c_str(), keep) != 0) {
      return absl::InternalError(
          absl::StrCat("cannot truncate ", path, ": ", std::strerror(errno)));
    }
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) {
    return absl::InternalError(
        absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  const auto closer = std::unique_ptr<int, void (*)(int*)>(
      new int(fd), [](int* f) { ::close(*f), delete f; });
  RETURN_IF_ERROR(SyncDirectory(job_dir));
  for (const std::string& name : names) {
    if (stop && stop()) return absl::OkStatus();
    if (done.count(name) != 0) continue;
    ASSIGN_OR_RETURN(const TensorView view, model->Get(name));
    const std::string hex = HashTensor(*model, view);
    const std::string line = absl::StrCat(hex, "  ", name, "\n");
    if (::write(fd, line.data(), line.size()) !=
            static_cast<ssize_t>(line.size()) ||
        ::fsync(fd) != 0) {
      return absl::InternalError(
          absl::StrCat("cannot append to ", path, ": ", std::strerror(errno)));
    }
    done[name] = hex;
    if (recorded) recorded(name, hex);
  }
  return absl::OkStatus();
}

}  // namespace quant
