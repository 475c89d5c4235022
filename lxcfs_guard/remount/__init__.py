"""The remount engine: registry (intent), discovery (what the kernel shows), plan (pure), engine (syscalls)."""
