"""The bus: the central server, its connections and commands, the registry and routing, discovery, ZAP and keys."""
