#ifndef WPS_CLIBCRYPTO_SHIM_H
#define WPS_CLIBCRYPTO_SHIM_H
/* OpenSSL 3's libcrypto (Debian's libssl-dev): HMAC, constant-time comparison and RSA
   signatures. Only BridgeCrypto imports this module. */
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/opensslv.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

/* Selections OpenSSL defines as composite macros, which Swift does not import. */
static inline int wps_evp_pkey_public_key(void) { return EVP_PKEY_PUBLIC_KEY; }

/* Parameter names as C string literals: OSSL_PARAM_BLD keeps the key pointer it is given until
   OSSL_PARAM_BLD_to_param, so a temporary string bridged from Swift would dangle. */
static inline const char *wps_param_rsa_n(void) { return OSSL_PKEY_PARAM_RSA_N; }
static inline const char *wps_param_rsa_e(void) { return OSSL_PKEY_PARAM_RSA_E; }
#endif
