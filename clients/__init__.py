"""The client library and the clients Orbit ships (spy, simulated instruments in `sim/`)."""
