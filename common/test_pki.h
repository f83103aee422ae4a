// A certificate authority for tests: EC P-256 keys and X.509 certificates
// made in memory with OpenSSL, written as PEM files, with whatever names and
// validity a test needs (an expired certificate, one from another CA).
#ifndef COMMON_TEST_PKI_H_
#define COMMON_TEST_PKI_H_

#include <cstdint>
#include <string>
#include <vector>

namespace quant {

struct TestCertificate {
  std::string cert_pem;
  std::string key_pem;
};

class TestCa {
 public:
  explicit TestCa(const std::string& name);

  const std::string& cert_pem() const { return self_.cert_pem; }

  // A certificate for `common_name` (also its DNS subject alternative name,
  // with `extra_dns_names`), valid from now + not_before_s to now +
  // not_after_s.
  TestCertificate Issue(const std::string& common_name,
                        int64_t not_before_s = -3600,
                        int64_t not_after_s = 86400,
                        const std::vector<std::string>& extra_dns_names = {});

 private:
  std::string name_;
  TestCertificate self_;
  int64_t next_serial_ = 2;
};

// Writes `text` to `path` (replacing it), CHECK-failing on error.
void WriteTestFile(const std::string& path, const std::string& text);

}  // namespace quant

#endif  // COMMON_TEST_PKI_H_
