#include "coordinator/tensor_service.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "proto/task_tensors.h"
#include "quant/quantize_model.h"

namespace quant {
namespace {

v1::TensorInfo InfoOf(const std::string& name, const TensorView& view) {
  v1::TensorInfo info;
  info.set_name(name);
  info.set_dtype(std::string(SafetensorsDTypeName(view.dtype)));
  for (int64_t d : view.shape) info.add_shape(d);
  info.set_size_bytes(view.nbytes);
  return info;
}

}  // namespace

std::string WindowsPath(const std::string& job_dir) {
  return job_dir + "/windows.safetensors";
}

absl::StatusOr<std::unique_ptr<TaskInputs>> TaskInputs::Open(
    const std::string& model_dir, const std::string& job_dir,
    const JobPlan& plan, const TaskRow& task, int64_t held_hidden_size) {
  std::unique_ptr<TaskInputs> inputs(new TaskInputs);
  ASSIGN_OR_RETURN(inputs->model_, SafetensorsCheckpoint::Open(model_dir));
  auto add = [&](const std::string& name, const TensorView& view) {
    inputs->infos_.push_back(InfoOf(name, view));
    inputs->views_.push_back(view);
  };
  // A whole job-directory file (a block result, a shard's statistics),
  // sent as its bytes.
  auto add_file = [&](const std::string& name,
                      const std::string& path) -> absl::Status {
    absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
    if (!file.ok()) {
      return absl::DataLossError(absl::StrCat("input ", name, " of task ",
                                              task.index, ": ",
                                              file.status().message()));
    }
    TensorView view;
    view.name = name;
    view.dtype = SafetensorsDType::kU8;
    view.shape = {static_cast<int64_t>((*file)->size())};
    view.data = (*file)->data();
    view.nbytes = (*file)->size();
    add(name, view);
    inputs->raw_files_.push_back(*std::move(file));
    return absl::OkStatus();
  };
  const SequenceRange range = TaskSequences(plan, task);
  if (task.kind == kEmbedTask) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(WindowsPath(job_dir)));
    const TensorView* windows = file->Find(kWindowsTensor);
    if (windows == nullptr || windows->shape.size() != 2 ||
        windows->shape[0] < std::max<int64_t>(1, range.first + range.count)) {
      return absl::DataLossError(
          absl::StrCat(WindowsPath(job_dir), " has no ", kWindowsTensor,
                       " tensor of ", range.first + range.count, " windows"));
    }
    // The task's shard of the windows (all of them without shards).
    TensorView shard = *windows;
    const size_t row_bytes = windows->nbytes / windows->shape[0];
    shard.shape[0] = range.count;
    shard.data += range.first * row_bytes;
    shard.nbytes = range.count * row_bytes;
    add(kWindowsTensor, shard);
    inputs->job_files_.push_back(std::move(file));
    const std::string embedding = "model.embed_tokens.weight";
    ASSIGN_OR_RETURN(const TensorView view, inputs->model_->Get(embedding));
    add(embedding, view);
    return inputs;
  }
  if (task.kind == kHeadTask) {
    for (const auto& [name, type] : plan.head_types) {
      ASSIGN_OR_RETURN(const TensorView view, inputs->model_->Get(name));
      add(name, view);
    }
    return inputs;
  }
  const std::string result = ResultInputPath(plan, job_dir, task);
  // A data-parallel forward task runs the quantized block: the result is
  // its weights.
  if (task.kind != kForwardTask || result.empty()) {
    const std::string prefix = absl::StrCat("model.layers.", task.layer, ".");
    for (const std::string& name : inputs->model_->TensorNames()) {
      if (name.rfind(prefix, 0) != 0) continue;
      ASSIGN_OR_RETURN(const TensorView view, inputs->model_->Get(name));
      add(name, view);
    }
    if (inputs->infos_.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(model_dir, " has no tensors of block ", task.layer));
    }
  }
  if (ReadsActivations(plan, task) && held_hidden_size > 0) {
    TensorView held;  // No bytes here.
    held.name = kActivationsTensor;
    held.dtype = SafetensorsDType::kF32;
    held.shape = {range.count, plan.seq_len, held_hidden_size};
    held.nbytes = static_cast<size_t>(range.count * plan.seq_len *
                                      held_hidden_size * sizeof(float));
    add(kActivationsTensor, held);
  } else if (ReadsActivations(plan, task)) {
    const std::string path = ActivationsInputPath(plan, job_dir, task);
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                     SafetensorsFile::Open(path));
    const TensorView* hidden = file->Find("hidden");
    if (hidden == nullptr) {
      return absl::DataLossError(absl::StrCat(path, " has no activations"));
    }
    add(kActivationsTensor, *hidden);
    inputs->job_files_.push_back(std::move(file));
  }
  if (!result.empty()) RETURN_IF_ERROR(add_file(kResultTensor, result));
  const std::vector<std::string> statistics =
      StatisticsInputPaths(plan, job_dir, task);
  for (size_t k = 0; k < statistics.size(); ++k) {
    RETURN_IF_ERROR(
        add_file(absl::StrCat(kStatisticsTensor, ".", k), statistics[k]));
  }
  return inputs;
}

uint64_t TaskInputs::total_bytes() const {
  uint64_t total = 0;
  for (const v1::TensorInfo& info : infos_) total += info.size_bytes();
  return total;
}

absl::Status TaskInputs::Stream(
    const std::string& tensor, uint64_t offset,
    const std::set<std::string>& skip, size_t chunk_bytes,
    const std::function<bool(const v1::Chunk&)>& emit,
    const std::function<void(size_t)>& sent) const {
  for (const std::string& name : skip) {
    if (std::none_of(
            infos_.begin(), infos_.end(),
            [&](const v1::TensorInfo& info) { return info.name() == name; })) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot skip ", name, ": the task has no such input"));
    }
  }
  size_t first = 0;
  if (!tensor.empty()) {
    while (first < infos_.size() && infos_[first].name() != tensor) ++first;
    if (first == infos_.size()) {
      return absl::NotFoundError(
          absl::StrCat("the task has no input named ", tensor));
    }
  } else if (offset != 0) {
    return absl::InvalidArgumentError("an offset needs a tensor");
  }
  for (size_t i = first; i < infos_.size(); ++i) {
    if (skip.count(infos_[i].name()) != 0) continue;
    const TensorView& view = views_[i];
    if (view.data == nullptr && view.nbytes > 0) {
      return absl::UnavailableError(absl::StrCat(
          infos_[i].name(),
          " are held by the worker that made them and not uploaded yet"));
    }
    // The pages sent are not needed again by this process.
    const auto release = [&](uint64_t from, uint64_t to) {
      TensorView part = view;
      part.data = view.data + from;
      part.nbytes = to - from;
      for (const auto& file : job_files_) {
        if (file->Contains(view)) return file->Release(part);
      }
      for (const auto& file : raw_files_) {
        if (view.data >= file->data() &&
            view.data < file->data() + file->size()) {
          return file->Release(part.data - file->data(), part.nbytes);
        }
      }
      model_->Release(part);
    };
    RETURN_IF_ERROR(SendTensor(infos_[i], view.data, i == first ? offset : 0,
                               chunk_bytes, emit, sent, release));
    release(0, view.nbytes);  // Pages straddling the released ranges.
  }
  return absl::OkStatus();
}

absl::Status CheckDeclaredOutput(const std::string& name, uint64_t size,
                                 bool declared_before,
                                 const std::vector<std::string>& expected,
                                 uint64_t max_output_bytes) {
  if (std::find(expected.begin(), expected.end(), name) == expected.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload of \"", name, "\", which the task does not output"));
  }
  if (declared_before) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", name, "\" uploaded twice"));
  }
  if (size > max_output_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"", name, "\" declares ", size,
        " bytes; this task's outputs take at most ", max_output_bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckNoOutputMissing(
    const std::vector<std::string>& expected,
    const std::set<std::string>& optional,
    const std::function<bool(const std::string&)>& has) {
  for (const std::string& name : expected) {
    if (!has(name) && optional.count(name) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("the upload lacks output \"", name, "\""));
    }
  }
  return absl::OkStatus();
}

UploadReceiver::UploadReceiver(std::string dir,
                               std::vector<std::string> expected,
                               uint64_t max_output_bytes,
                               std::set<std::string> optional)
    : dir_(std::move(dir)),
      expected_(std::move(expected)),
      optional_(std::move(optional)),
      max_output_bytes_(max_output_bytes) {}

UploadReceiver::~UploadReceiver() = default;

absl::Status UploadReceiver::Accept(const v1::Chunk& chunk) {
  if (verifier_ == nullptr) {
    // The first chunk of a new output.
    RETURN_IF_ERROR(CheckDeclaredOutput(
        chunk.tensor(), chunk.has_info() ? chunk.info().size_bytes() : 0,
        received_.count(chunk.tensor()) > 0, expected_, max_output_bytes_));
    if (!chunk.has_info()) {
      return absl::DataLossError(absl::StrCat(
          chunk.tensor(), ": the first chunk carries no tensor info"));
    }
    verifier_ = std::make_unique<ChunkVerifier>(chunk.tensor(),
                                                chunk.info().size_bytes());
    ASSIGN_OR_RETURN(writer_,
                     AtomicFileWriter::Create(dir_ + "/" + chunk.tensor()));
  }
  RETURN_IF_ERROR(verifier_->Accept(chunk));
  RETURN_IF_ERROR(writer_->Write(chunk.data()));
  bytes_ += chunk.data().size();
  if (verifier_->done()) {
    RETURN_IF_ERROR(writer_->Commit());
    Received& r = received_[verifier_->tensor()];
    r.path = writer_->final_path();
    r.bytes = verifier_->offset();
    r.digest = verifier_->digest();
    verifier_.reset();
    writer_.reset();
  }
  return absl::OkStatus();
}

absl::Status UploadReceiver::Finish() {
  if (verifier_ != nullptr) {
    return absl::DataLossError(absl::StrCat(verifier_->tensor(),
                                            ": the upload ended after ",
                                            verifier_->offset(), " bytes"));
  }
  return CheckNoOutputMissing(
      expected_, optional_,
      [this](const std::string& name) { return received_.count(name) > 0; });
}

}  // namespace quant
