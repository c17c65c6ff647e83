#ifndef WPS_CHIREDIS_SHIM_H
#define WPS_CHIREDIS_SHIM_H
// hiredis 1.x with its TLS part (hiredis_ssl, on the system's OpenSSL): Debian 13's source
// package, built into /usr/local by scripts/bootstrap where the system's hiredis is older.
#include <hiredis/hiredis.h>
#include <hiredis/hiredis_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#if HIREDIS_MAJOR < 1
#error "wps-bridge needs hiredis 1.0 or newer (TLS): run scripts/bootstrap"
#endif

// OpenSSL macros Swift cannot call.
static inline int wps_ssl_set_server_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}
static inline int wps_ssl_ctx_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}
static inline int wps_ssl_filetype_pem(void) { return SSL_FILETYPE_PEM; }
static inline int wps_hiredis_major(void) { return HIREDIS_MAJOR; }
static inline int wps_hiredis_minor(void) { return HIREDIS_MINOR; }
static inline int wps_hiredis_patch(void) { return HIREDIS_PATCH; }
#endif
