/* privax: one binary, a table of subcommands. main only parses argv and dispatches. */
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

#include "cli/cmd.h"

static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const struct {
    const char *name;
    int (*handler)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"serve", cli_cmd_serve, "serve --config FILE [--port-file F]   run the gateway"},
    {"sim", cli_cmd_sim, "sim [--listen ADDR] [flags]            run a simulated GPU node"},
    {"usage", cli_cmd_usage, "usage --config FILE [--by G] [--month M|--since D] [--json]"},
    {"bill", cli_cmd_bill, "bill --config FILE --month YYYY-MM [--json]  the month's bill"},
    {"migrate", cli_cmd_migrate, "migrate --config FILE                  create/update the store"},
    {"config", cli_cmd_config, "config check FILE                      validate a config file"},
    {"nodes", cli_cmd_nodes, "nodes check|nginx-conf --nodes FILE    node health, nginx config"},
    {"scale", cli_cmd_scale, "scale --nodes FILE [--config FILE]     add a node? (triggers, cost)"},
    {"version", cmd_version, "version                                print the version"},
    {"help", cmd_help, "help                                   this text"},
};

static int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("privax %s\n", PX_VERSION);
    return EX_OK;
}

static int cmd_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("usage: privax <command> [args]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        printf("  %s\n", commands[i].help);
    }
    printf("\nEach command takes --help for its own flags.\n");
    return EX_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        cmd_help(0, NULL);
        return EX_USAGE;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            return commands[i].handler(argc - 1, argv + 1);
        }
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        return cmd_help(0, NULL);
    }
    if (strcmp(argv[1], "--version") == 0) {
        return cmd_version(0, NULL);
    }
    fprintf(stderr, "privax: unknown command '%s' (try 'privax help')\n", argv[1]);
    return EX_USAGE;
}
