#ifndef WPS_CRDKAFKA_SHIM_H
#define WPS_CRDKAFKA_SHIM_H
#include <librdkafka/rdkafka.h>

/* Constants librdkafka defines as casting macros, which Swift does not import. */
static inline int32_t wps_rd_kafka_partition_ua(void) { return RD_KAFKA_PARTITION_UA; }
static inline int64_t wps_rd_kafka_offset_invalid(void) { return RD_KAFKA_OFFSET_INVALID; }
#endif
