"""The gateway: Carina's only HTTP ingress (REST API v1 for users, callback routes for guests)."""
