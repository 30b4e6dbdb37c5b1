/* Placeholder until the sim command lands (same session). */
#include <stdio.h>
#include <sysexits.h>

#include "cli/cmd.h"

int cli_cmd_sim(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "privax sim: not built yet\n");
    return EX_SOFTWARE;
}
