"""Capture: a module traced into a cost graph, and that graph cut into a device and a server program."""
