/* Placeholder translation unit so the library target exists while its sources are written. */
int px_config_placeholder_unit(void);
int px_config_placeholder_unit(void)
{
    return 0;
}
