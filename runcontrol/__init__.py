"""Orbit run control: the ground (errors, protocol, states, pid files, processes) and the layers in
folders of their own: the bus, the supervision, the control."""
