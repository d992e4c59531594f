"""Security suite (issue 19): authentication, roles, tokens, tenants, secrets, transport."""
