"""The thin edge to the kernel: syscalls through ctypes, /proc parsing, sd_notify. Imports nothing of ours."""
