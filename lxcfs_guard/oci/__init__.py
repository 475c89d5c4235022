"""Runtime integration: the OCI hook that binds the files into a new container and registers it."""
