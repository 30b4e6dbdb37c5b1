/* Concurrent blocking GETs with libcurl's multi interface (see fetch.h). */
#include "ops/fetch.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/mem.h"
#include "core/util.h"

struct slot {
    struct ops_fetch *f;
    CURL *h;
    int overflow; /* the body went past its cap */
    uint64_t t0;  /* px_mono_ms() at start */
};

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct slot *s = ud;
    size_t n = size * nmemb;
    if (buf_append(&s->f->body, p, n) != 0) {
        s->overflow = 1;
        return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
    }
    return n;
}

void ops_fetch_all(struct ops_fetch *f, size_t n, uint64_t timeout_ms)
{
    CURLM *m = curl_multi_init();
    struct slot *slots = px_calloc(n ? n : 1, sizeof(*slots));
    for (size_t i = 0; i < n; i++) {
        struct slot *s = &slots[i];
        s->f = &f[i];
        f[i].status = 0;
        f[i].error[0] = '\0';
        buf_reset(&f[i].body);
        s->t0 = px_mono_ms();
        s->h = curl_easy_init();
        curl_easy_setopt(s->h, CURLOPT_URL, f[i].url);
        curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(s->h, CURLOPT_WRITEDATA, s);
        curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
        curl_easy_setopt(s->h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(s->h, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(s->h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(s->h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(s->h, CURLOPT_USERAGENT, "privax-ops");
        curl_multi_add_handle(m, s->h);
    }
    int running = 1;
    while (running) {
        if (curl_multi_perform(m, &running) != CURLM_OK) {
            break;
        }
        if (running) {
            curl_multi_poll(m, NULL, 0, 200, NULL);
        }
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        struct slot *s = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        if (s == NULL) {
            continue;
        }
        s->f->ms = px_mono_ms() - s->t0;
        if (msg->data.result == CURLE_OK) {
            long code = 0;
            curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &code);
            s->f->status = (int)code;
        } else if (s->overflow) {
            snprintf(s->f->error, sizeof(s->f->error), "response larger than %zu bytes",
                     s->f->body.cap);
        } else {
            snprintf(s->f->error, sizeof(s->f->error), "%s", curl_easy_strerror(msg->data.result));
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (f[i].status == 0 && f[i].error[0] == '\0') {
            snprintf(f[i].error, sizeof(f[i].error), "no response");
        }
        curl_multi_remove_handle(m, slots[i].h);
        curl_easy_cleanup(slots[i].h);
    }
    free(slots);
    curl_multi_cleanup(m);
}
