#ifndef PX_CORE_ERR_H
#define PX_CORE_ERR_H

/* Error codes. Fallible functions return 0 or a negative value: either -errno or one of
 * these (all below -10000 so they never collide with errno values). */
enum px_err {
    PX_OK = 0,
    PX_EOVERFLOW = -10001, /* a capped buffer would exceed its cap */
    PX_EPARSE = -10002,    /* malformed input */
    PX_ECONFIG = -10003,   /* invalid configuration */
    PX_ESTORE = -10004,    /* the usage store failed */
    PX_EUPSTREAM = -10005, /* the upstream failed */
    PX_ECLOSED = -10006,   /* the peer is gone */
    PX_ECONNECT = -10007,  /* could not connect: nothing was sent */
};

/* Text for a code from this header or a -errno. Borrowed, static. Any thread. */
const char *px_strerror(int err);

#endif
