"""The environment variable holding the gateway's bearer token, named once for the gateway and the CLI."""

TOKEN_ENV = "ASYMPO_API_TOKEN"
