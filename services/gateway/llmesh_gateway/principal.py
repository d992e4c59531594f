"""Who is calling: the authenticated principal and its role."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROLE_USER = "user"
ROLE_ADMIN = "admin"
ROLES = (ROLE_USER, ROLE_ADMIN)
TENANT_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: subject (key id or JWT ``sub``), tenant and role."""

    subject: str
    tenant: str
    role: str
    kind: str  # "api_key" or "jwt"

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    def allows(self, role: str) -> bool:
        """Whether this principal holds ``role`` (admin implies user)."""
        return self.role in (ROLE_ADMIN, role)
