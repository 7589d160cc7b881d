"""The pid-file watchdog that keeps the central server alive.

Reads the server's pid file and its modification time (see runcontrol.pidfile);
must not import server internals.
"""
