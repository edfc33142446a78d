"""The agent loop of the gateway (GatewayRequest.tools): plan, model calls, conversation, steps."""
