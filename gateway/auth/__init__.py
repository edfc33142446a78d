"""Who calls the gateway: API keys, their scopes and limits, and the caller of the current RPC."""
