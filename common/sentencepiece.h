// libsentencepiece's processor header, includable beside Abseil.
//
// sentencepiece_processor.h (0.1.97) declares `namespace absl { using
// std::string_view; }`, which clashes with Abseil's own absl::string_view
// class (Debian builds Abseil with ABSL_OPTION_USE_STD_STRING_VIEW 0). The
// macro moves that shim into a namespace of its own while the header is
// read; the declarations still take std::string_view, so the mangled names,
// and linking, are unchanged.
#ifndef COMMON_SENTENCEPIECE_H_
#define COMMON_SENTENCEPIECE_H_

#define absl quant_sentencepiece_absl_shim
#include <sentencepiece_processor.h>
#undef absl

#endif  // COMMON_SENTENCEPIECE_H_
