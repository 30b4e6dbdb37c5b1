/* Placeholder until the serve command lands (same session). */
#include <stdio.h>
#include <sysexits.h>

#include "cli/cmd.h"

int cli_cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "privax serve: not built yet\n");
    return EX_SOFTWARE;
}
