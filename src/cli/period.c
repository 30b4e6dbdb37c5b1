/* Date arguments shared by the report commands (usage, bill). */
#include "cli/cmd.h"

#include <stdint.h>
#include <string.h>
#include <time.h>

#include "core/err.h"

/* "YYYY-MM" to [first ms of the month, first ms of the next) in UTC. Rejects anything else. */
int cli_parse_month(const char *s, int64_t *since_ms, int64_t *until_ms)
{
    if (strlen(s) != 7 || s[4] != '-') {
        return PX_EPARSE;
    }
    for (int i = 0; i < 7; i++) {
        if (i != 4 && (s[i] < '0' || s[i] > '9')) {
            return PX_EPARSE;
        }
    }
    int year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    int month = (s[5] - '0') * 10 + (s[6] - '0');
    if (year < 1970 || month < 1 || month > 12) {
        return PX_EPARSE;
    }
    struct tm a = {.tm_year = year - 1900, .tm_mon = month - 1, .tm_mday = 1};
    struct tm b = {.tm_year = year - 1900 + (month == 12), .tm_mon = month % 12, .tm_mday = 1};
    *since_ms = (int64_t)timegm(&a) * 1000;
    *until_ms = (int64_t)timegm(&b) * 1000;
    return 0;
}
