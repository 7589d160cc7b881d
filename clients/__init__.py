"""The client library (a core without I/O and its blocking driver) and the clients Orbit ships."""
