"""The stages of a gateway request; each yields GatewayEvents that the orchestrator folds and relays."""
