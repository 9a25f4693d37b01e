"""Command-line clients of Carina's REST API (`oneenv`)."""
