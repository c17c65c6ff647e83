#ifndef WPS_CMALLOC_SHIM_H
#define WPS_CMALLOC_SHIM_H
/* glibc's malloc tuning (<malloc.h> is not in Swift's Glibc module). */
#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
static inline int wps_malloc_arena_max(int arenas) { return mallopt(M_ARENA_MAX, arenas); }
/* Fixing either threshold turns off glibc's dynamic one, which rises to the largest block ever
   freed (up to 32 MB) and then keeps that much free memory in the heap. */
static inline int wps_malloc_mmap_threshold(int bytes) { return mallopt(M_MMAP_THRESHOLD, bytes); }
static inline int wps_malloc_trim_threshold(int bytes) { return mallopt(M_TRIM_THRESHOLD, bytes); }
#else
static inline int wps_malloc_arena_max(int arenas) { (void)arenas; return 0; }
static inline int wps_malloc_mmap_threshold(int bytes) { (void)bytes; return 0; }
static inline int wps_malloc_trim_threshold(int bytes) { (void)bytes; return 0; }
#endif
#endif
