"""One pure renderer per virtual file: (host text, cgroup facts) -> text. No I/O here, so every view is
unit-tested with hand-made facts, and the daemon decides what to read and when."""
