/*
 * _drain_window.h: included by _speedups.c just before the Core's method table (it sees
 * every definition above that point).  DRAIN_WINDOW_METHODS is spliced into the table.
 */
#define DRAIN_WINDOW_METHODS
