"""Peak-event load simulations with locust: gRPC users, scenarios, load shapes, invariants."""
