"""Keeps `serve` alive: supervise loop, health probe, process events, status file."""
