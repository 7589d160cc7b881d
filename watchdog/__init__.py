"""The pid-file watchdog: keeps one command alive by its pid file (the server and the run controller, each under its own).

Reads the server's pid file and its modification time (see runcontrol.pidfile);
must not import server internals.
"""
