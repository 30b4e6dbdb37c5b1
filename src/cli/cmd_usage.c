/* Placeholder until the usage command lands (same session). */
#include <stdio.h>
#include <sysexits.h>

#include "cli/cmd.h"

int cli_cmd_usage(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "privax usage: not built yet\n");
    return EX_SOFTWARE;
}
