/* Placeholder until the config command lands (same session). */
#include <stdio.h>
#include <sysexits.h>

#include "cli/cmd.h"

int cli_cmd_config(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "privax config: not built yet\n");
    return EX_SOFTWARE;
}
