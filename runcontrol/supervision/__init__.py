"""The supervision: the supervisor and its backends (local processes; other hosts' supervisord), and the export of what a host needs."""
