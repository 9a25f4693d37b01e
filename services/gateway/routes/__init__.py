"""The gateway's HTTP routes, one module per resource (users) plus `guest` (callbacks from VMs)."""
