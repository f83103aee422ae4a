// The tensors of a GGUF file outside the decoder blocks (embeddings, final
// norm, output head), encoded in their GGUF types ahead of the file: the
// distributed service's HEAD task makes them on a worker, and the GGUF
// writer (AssembleOutput) copies them as encoded. The same rows the
// converter encodes itself (QuantizeRows row by row, no importance), so a
// file is byte for byte the same either way.
//
// The file: safetensors, one U8 tensor per Hugging Face name holding its
// encoded rows.
#ifndef QUANT_GGUF_HEAD_H_
#define QUANT_GGUF_HEAD_H_

#include <map>
#include <string>

#include "absl/status/status.h"
#include "format/ggml_type.h"
#include "format/safetensors.h"

namespace quant {

// <work_dir>/head.safetensors.
std::string GgufHeadPath(const std::string& work_dir);

// Encodes each tensor of `types` (read from `source`, converted to F32 in
// chunks of rows) and writes the file at `path` atomically. NotFound names a
// tensor `source` lacks.
absl::Status WriteGgufHead(const SafetensorsCheckpoint& source,
                           const std::map<std::string, GgmlType>& types,
                           const std::string& path);

// Checks a head file a worker sent before it is committed: a safetensors
// file holding exactly the tensors of `types`, each U8 with the bytes its
// type encodes `source`'s tensor of that name in. InvalidArgument names the
// tensor at fault.
absl::Status CheckGgufHead(const std::string& path,
                           const SafetensorsCheckpoint& source,
                           const std::map<std::string, GgmlType>& types);

}  // namespace quant

#endif  // QUANT_GGUF_HEAD_H_
