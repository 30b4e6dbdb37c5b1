#include "core/err.h"

#include <string.h>

const char *px_strerror(int err)
{
    switch (err) {
    case PX_OK:
        return "success";
    case PX_EOVERFLOW:
        return "buffer cap exceeded";
    case PX_EPARSE:
        return "malformed input";
    case PX_ECONFIG:
        return "invalid configuration";
    case PX_ESTORE:
        return "usage store failure";
    case PX_EUPSTREAM:
        return "upstream failure";
    case PX_ECLOSED:
        return "peer closed";
    case PX_ECONNECT:
        return "could not connect";
    default:
        return err < 0 ? strerror(-err) : "unknown error";
    }
}
