"""Stand-ins for inference engines that cannot run here, following each engine's documented HTTP API."""
