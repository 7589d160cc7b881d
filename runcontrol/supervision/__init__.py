"""The supervision: the supervisor and its backends (local processes; each host's supervisord later)."""
