"""certkit's pytest plugin (registered as the ``pytest11`` entry point ``certkit``): being built."""
