#ifndef WPS_CHIREDIS_SHIM_H
#define WPS_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#endif
