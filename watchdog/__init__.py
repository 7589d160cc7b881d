"""The pid-file watchdog: keeps one command alive by its pid file (the server and the run controller, each
under its own), the server with a standby copy started ahead.

Reads the server's pid file and its modification time (see runcontrol.pidfile), and speaks to its standby
through runcontrol.standby; must not import server internals.
"""
