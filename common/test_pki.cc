#include "common/test_pki.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

namespace quant {
namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "test_pki: %s failed\n", what);
    std::abort();
  }
}

struct Deleters {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
};
template <typename T>
using Owned = std::unique_ptr<T, Deleters>;

std::string Drain(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return std::string(data, size);
}

Owned<EVP_PKEY> NewKey() {
  Owned<EVP_PKEY> key(EVP_EC_gen("P-256"));
  Check(key != nullptr, "EVP_EC_gen");
  return key;
}

Owned<EVP_PKEY> ReadKey(const std::string& pem) {
  Owned<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Owned<EVP_PKEY> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  Check(key != nullptr, "PEM_read_bio_PrivateKey");
  return key;
}

Owned<X509> ReadCert(const std::string& pem) {
  Owned<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Owned<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  Check(cert != nullptr, "PEM_read_bio_X509");
  return cert;
}

void AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  Check(ext != nullptr, "X509V3_EXT_conf_nid");
  Check(X509_add_ext(cert, ext, -1) == 1, "X509_add_ext");
  X509_EXTENSION_free(ext);
}

// Makes a certificate for `key` named `common_name`, signed by
// `issuer_key` (the issuer's certificate, or null for a self-signed one).
TestCertificate Make(const std::string& common_name, EVP_PKEY* key,
                     X509* issuer, EVP_PKEY* issuer_key, int64_t serial,
                     int64_t not_before_s, int64_t not_after_s, bool is_ca,
                     const std::vector<std::string>& dns_names) {
  Owned<X509> cert(X509_new());
  Check(X509_set_version(cert.get(), 2) == 1, "X509_set_version");
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), not_after_s);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(
      name, "CN", MBSTRING_ASC,
      reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0);
  X509_set_issuer_name(
      cert.get(), issuer == nullptr ? name : X509_get_subject_name(issuer));
  Check(X509_set_pubkey(cert.get(), key) == 1, "X509_set_pubkey");
  X509* issuer_cert = issuer == nullptr ? cert.get() : issuer;
  if (is_ca) {
    AddExtension(cert.get(), issuer_cert, NID_basic_constraints,
                 "critical,CA:TRUE");
    AddExtension(cert.get(), issuer_cert, NID_key_usage,
                 "critical,keyCertSign,cRLSign");
  } else {
    AddExtension(cert.get(), issuer_cert, NID_basic_constraints, "CA:FALSE");
    AddExtension(cert.get(), issuer_cert, NID_ext_key_usage,
                 "serverAuth,clientAuth");
    std::string san;
    for (const std::string& dns : dns_names) {
      if (!san.empty()) san += ",";
      san += "DNS:" + dns;
    }
    AddExtension(cert.get(), issuer_cert, NID_subject_alt_name, san);
  }
  AddExtension(cert.get(), issuer_cert, NID_subject_key_identifier, "hash");
  Check(X509_sign(cert.get(), issuer_key, EVP_sha256()) > 0, "X509_sign");

  TestCertificate out;
  Owned<BIO> cert_bio(BIO_new(BIO_s_mem()));
  Check(PEM_write_bio_X509(cert_bio.get(), cert.get()) == 1, "write cert");
  out.cert_pem = Drain(cert_bio.get());
  Owned<BIO> key_bio(BIO_new(BIO_s_mem()));
  Check(PEM_write_bio_PrivateKey(key_bio.get(), key, nullptr, nullptr, 0,
                                 nullptr, nullptr) == 1,
        "write key");
  out.key_pem = Drain(key_bio.get());
  return out;
}

}  // namespace

TestCa::TestCa(const std::string& name) : name_(name) {
  Owned<EVP_PKEY> key = NewKey();
  self_ = Make(name, key.get(), nullptr, key.get(), 1, -86400, 10 * 86400,
               /*is_ca=*/true, {});
}

TestCertificate TestCa::Issue(const std::string& common_name,
                              int64_t not_before_s, int64_t not_after_s,
                              const std::vector<std::string>& extra_dns_names) {
  Owned<EVP_PKEY> key = NewKey();
  Owned<X509> ca_cert = ReadCert(self_.cert_pem);
  Owned<EVP_PKEY> ca_key = ReadKey(self_.key_pem);
  std::vector<std::string> dns = {common_name};
  dns.insert(dns.end(), extra_dns_names.begin(), extra_dns_names.end());
  return Make(common_name, key.get(), ca_cert.get(), ca_key.get(),
              next_serial_++, not_before_s, not_after_s, /*is_ca=*/false, dns);
}

void WriteTestFile(const std::string& path, const std::string& text) {
  // Through a temporary name and a rename, as a rotation in production does,
  // so that a watcher never reads half a file.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    Check(out.good(), "write test file");
  }
  Check(std::rename(tmp.c_str(), path.c_str()) == 0, "rename test file");
}

}  // namespace quant
